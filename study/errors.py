"""The one exception type for bad input (defined in analysis/errors.py, which both halves import:
the aggregation may not import study/)."""
from analysis.errors import InputError  # noqa: F401
