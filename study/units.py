"""One unit of a study, run the same way by both executors: a grid point (with its checkpoints), or
the seeds of a condition fused into one array. study/sweep.py (Ray Tune) and study/local.py (this
machine) differ only in where a checkpoint's bytes go and what they report after an epoch; this
module does the rest, and imports neither Ray nor, at import time, torch (a local worker sets its
GPU and thread count first).
"""
from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable

import numpy as np

from .artifacts import ArtifactDir
from .config import validate_trial
from .plan import is_done

# epoch, the trial's epoch metrics, and the checkpoint's bytes when one is due (None otherwise)
AfterEpoch = Callable[[int, dict, bytes | None], None]


def read_state(read: Callable[[], bytes], where: str, notes: list[str]) -> dict | None:
    """A checkpoint's saved state, or None with a note when it cannot be read (truncated, corrupt, or
    a pickle that is more than tensors: torch.load with weights_only runs no code); the trial then
    starts over rather than crash."""
    import torch
    try:
        return torch.load(io.BytesIO(read()), map_location="cpu", weights_only=True)
    except Exception as e:
        notes.append(f"checkpoint {where} unreadable ({type(e).__name__}: {e}); restarted from scratch")
        print(f"WARNING: {notes[-1]}", flush=True)
        return None


def run_point(cfg: dict, out: ArtifactDir, *, state: dict | None, notes: list[str], gpus: list,
              checkpoint_every: int, after_epoch: AfterEpoch, log=print) -> dict:
    """One grid point's trial from `state` (None: from scratch), with its state serialised every
    `checkpoint_every` epochs and at the last one and handed to `after_epoch`. Returns the trial's
    result; the caller drops the checkpoints (plan.drop_checkpoints) once it has reported it: Tune
    restores an unreported trial from its last checkpoint, which must still exist."""
    import torch

    from .trial import run_trial

    def on_epoch(epoch: int, metrics: dict, snapshot) -> None:
        saved = None
        if epoch % checkpoint_every == 0 or epoch == cfg["epochs"]:
            buf = io.BytesIO()
            torch.save(snapshot(), buf)
            saved = buf.getvalue()
        after_epoch(epoch, metrics, saved)

    return run_trial(cfg, out, on_epoch=on_epoch, resume=state, notes=notes, gpus=gpus, log=log)


def still_to_run(points: list[dict], outs: list[ArtifactDir], fixed: dict) -> list[tuple[dict, ArtifactDir]]:
    """The (resolved config, folder) of each point whose trial.json is not complete for its config
    (a complete one of another config is bad input: is_done raises)."""
    todo = []
    for point, out in zip(points, outs):
        cfg = validate_trial({**fixed, **point})
        if is_done(out, cfg):
            print(f"{out}: trial.json already complete, not recomputed")
        else:
            todo.append((cfg, out))
    return todo


def run_group(configs: list[dict], outs: list[ArtifactDir], *, gpus: list,
              on_epoch: Callable[[int, dict], None] | None = None, log=print) -> list[dict]:
    """Seeds of one condition as one array model (run.fuse_seeds), each into its own grid point's
    folder. No mid-training checkpoints: a crash retrains the array."""
    from .fused import run_fused_trials
    return run_fused_trials(configs, outs, on_epoch=on_epoch, gpus=gpus, log=log) if configs else []


def gaussian_now(points: list[dict]) -> dict:
    """Live science for the status table and TensorBoard: where the trajectory's Gaussian noise
    goes after this epoch. One model: its top class and that class's share, and every class's
    share (`trajectory/<class>`). Several (a fused group): the top class of most models, how many
    of them, and its mean share over them."""
    if not points:  # every model of a fused group diverged
        return {}
    tops = [max(p["shares"], key=p["shares"].get) for p in points]
    top, count = Counter(tops).most_common(1)[0]
    share = float(np.mean([p["shares"][top] for p in points]))
    if len(points) == 1:
        return {"gaussian_top": top, "gaussian_share": share, "trajectory": dict(points[0]["shares"])}
    return {"gaussian_top": f"{top} ({count}/{len(points)})", "gaussian_share": share}


def failure_reason(error) -> str:
    """The cause of a failed trial in one line (Ray wraps it in a RayTaskError whose text starts
    with the worker's pid)."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text if text.startswith(type(cause).__name__) else f"{type(cause).__name__}: {text}"
