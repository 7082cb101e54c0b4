"""The Ray behaviour study/sweep.py relies on beyond Ray's public API, each pinned here against the
installed Ray (checked on Ray 2.60.0): a Ray upgrade that changes one fails this file, not a study.

Public API used as documented (nothing to pin): ray.tune.CLIReporter (subclassed, `report(trials,
done, *sys_info)` extended and passed on), ray.tune.Callback.on_step_begin(iteration, trials).
Pinned: the Trial objects those hand over (a DeveloperAPI: their `status` strings), and two
environment variables Ray reads but documents only in docstrings and error messages."""
from __future__ import annotations

import inspect

import pytest

ray = pytest.importorskip("ray")


def test_the_public_classes_the_sweep_extends_are_public_with_the_signatures_it_uses():
    from ray.tune import Callback, CLIReporter
    from ray.util.annotations import AnnotationType
    assert CLIReporter._annotated_type == AnnotationType.PUBLIC_API == Callback._annotated_type
    assert list(inspect.signature(CLIReporter.report).parameters) == ["self", "trials", "done", "sys_info"]
    assert list(inspect.signature(Callback.on_step_begin).parameters) == ["self", "iteration", "trials", "info"]


def test_trial_status_strings_the_pending_watch_reads():
    """PendingWatch.observe compares `trial.status` with "RUNNING" and "PENDING"."""
    from ray.tune.experiment import Trial
    assert (Trial.PENDING, Trial.RUNNING) == ("PENDING", "RUNNING")


def test_ray_air_new_output_0_selects_the_reporter_that_takes_our_columns(monkeypatch):
    """run() sets RAY_AIR_NEW_OUTPUT=0 around Tuner.fit so that Tune uses the CLIReporter given to
    it (study_reporter) instead of its newer output, which ignores it."""
    from ray.tune.experimental.output import get_air_verbosity
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    assert get_air_verbosity(1) is None
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    assert get_air_verbosity(1) is not None


def test_ray_override_job_runtime_env_is_what_ray_init_reads():
    """init_ray sets RAY_OVERRIDE_JOB_RUNTIME_ENV=1 for ray.init under `ray job submit`: without it Ray
    refuses an env var set both in the job's runtime env and in ours."""
    from ray._private import worker
    assert 'os.getenv("RAY_OVERRIDE_JOB_RUNTIME_ENV") == "1"' in inspect.getsource(worker)
