"""What produced a result: library versions, the device, the code revision."""
from __future__ import annotations

import os
import platform
from importlib import metadata

from analysis.revision import AT_IMPORT


def versions(device=None) -> dict:
    import numpy
    import torch
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("torchvision", "ray", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if device is not None and device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    else:
        out["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return out


def code_revision() -> dict:
    """The code this process runs: taken once, when this module was imported (with the rest of the
    code), not when a trial ends. A study running for hours in one process while its checkout moves
    on would otherwise record each trial under the commit that was current when it finished."""
    return dict(AT_IMPORT)
