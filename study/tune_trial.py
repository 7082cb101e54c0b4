"""Inside a Tune trial: the function Tune runs for each grid point (or fused group of seeds) on
whichever node it lands. It checks that the study's folder is the driver's, resolves the config,
skips a grid point whose trial.json is complete, resumes from Tune's checkpoint, runs the unit
(study/units.py, as the local executor does) and reports each epoch to Tune. The driver is
study/sweep.py."""
from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from analysis.contract import COMPLETED, TUNE_ERROR_TXT, join_uri, trial_dirname

from .artifacts import ArtifactDir
from .config import validate_trial
from .errors import InputError
from .plan import CHECKPOINT_FILE, drop_checkpoints, final_metrics, is_done
from .units import gaussian_now, read_state, run_group, run_point, still_to_run

DRIVER_TOKEN = ".driver-token"   # <study>/.driver-token: proves a local storage is the driver's folder
# A trial that meets bad input reports it under this key and ends: Tune retries every exception
# (FailureConfig.max_failures counts them all alike), and no retry can fix bad input.
INPUT_ERROR = "input_error"


def tune_state(checkpoint, notes: list[str]) -> dict | None:
    """The state a Tune checkpoint holds (units.read_state), or None when there is none."""
    if checkpoint is None:
        return None

    def read() -> bytes:
        with checkpoint.as_directory() as d:
            return (Path(d) / CHECKPOINT_FILE).read_bytes()
    return read_state(read, checkpoint.path, notes)


def tune_folder(config: dict, axes: list[str]) -> str:
    """The folder of a Tune trial in the study: its grid point's, or for a fused group
    `fused_<condition>_seeds=0.1.2.3` (Tune's own files only; each seed writes to its point's)."""
    if "seeds" in config and "seed" in axes:
        return "fused_" + trial_dirname({**{a: config[a] for a in axes if a != "seed"}, "seeds": config["seeds"]})
    return trial_dirname(order_axes(config, axes))


def storage_is_shared(experiment: str, token: str | None) -> bool:
    """Whether this node sees the driver's token file in a local storage (None: a URI, shared
    by definition)."""
    if token is None:
        return True
    try:
        return (Path(experiment.removeprefix("file://")) / DRIVER_TOKEN).read_text() == token
    except OSError:
        return False


def tune_trial(config: dict, *, fixed: dict, axes: list[str], checkpoint_every: int,
               experiment: str, token: str | None) -> None:
    """The Tune function trainable. `config` holds the grid point only (the status table's
    columns); the fixed keys, the axes' order and where the study lives come from the driver
    through tune.with_parameters. Bad input ends the trial with its reason, never a retry."""
    from ray import tune
    if not storage_is_shared(experiment, token):
        import socket
        raise RuntimeError(f"run.storage {experiment} is not the driver's folder on this node "
                           f"({socket.gethostname()}): a local storage must be a folder every node "
                           "mounts at the same path (NFS, EFS), or use a bucket URI; this trial will "
                           "not write its results to this node's own disk")
    try:
        return _tune_trial(config, fixed, axes, checkpoint_every, experiment)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        try:  # the reason beside the trial, where the aggregation reports it
            ArtifactDir.at(join_uri(experiment, tune_folder(config, axes))).write_bytes(
                TUNE_ERROR_TXT, f"InputError: {e}\n".encode())
        except OSError:
            pass
        tune.report({INPUT_ERROR: str(e), "done": True})


def _tune_trial(config: dict, fixed: dict, axes: list[str], checkpoint_every: int, experiment: str) -> None:
    """Resolve, skip if done, resume if possible, run, report."""
    import ray
    from ray import tune

    gpus = ray.get_gpu_ids()  # what Ray gave this trial: with GPUs and no CUDA it must fail, not train on the CPU
    if "seeds" in config and "seed" in axes:
        return _fused_tune_trial(config, fixed, axes, experiment, gpus)
    cfg = validate_trial({**fixed, **config})
    out = ArtifactDir.at(join_uri(experiment, tune_folder(config, axes)))
    if is_done(out, cfg):
        print(f"{out}: trial.json already complete, not recomputed")
        tune.report(final_metrics(out.read_json()))
        return

    notes: list[str] = []

    def after_epoch(epoch: int, metrics: dict, saved: bytes | None) -> None:
        metrics = {**{k: metrics[k] for k in ("epoch", "train_loss", "train_accuracy", "seconds")},
                   **gaussian_now([metrics["trajectory"]])}
        if saved is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / CHECKPOINT_FILE).write_bytes(saved)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    result = run_point(cfg, out, state=tune_state(tune.get_checkpoint(), notes), notes=notes, gpus=gpus,
                       checkpoint_every=checkpoint_every, after_epoch=after_epoch)
    tune.report(final_metrics(result))
    # after the report: a trial Tune saw unfinished is restored from its checkpoint. Tune may end the
    # trial at that report; the driver then drops them (plan.drop_finished_checkpoints)
    drop_checkpoints(out)


def _fused_tune_trial(config: dict, fixed: dict, axes: list[str], experiment: str, gpus: list) -> None:
    """Several seeds of one condition as one array model (run.fuse_seeds). Each seed's artifacts
    go to its own grid-point folder, exactly where a separate trial would put them; seeds already
    complete there are skipped."""
    from ray import tune

    condition = {k: v for k, v in config.items() if k != "seeds"}
    points = [{**condition, "seed": seed} for seed in config["seeds"]]
    outs = [ArtifactDir.at(join_uri(experiment, trial_dirname(order_axes(p, axes)))) for p in points]
    todo = still_to_run(points, outs, fixed)

    def on_epoch(epoch: int, metrics: dict) -> None:
        tune.report({"epoch": epoch, "train_loss": float(np.mean(metrics["train_loss"])),
                     "seconds": metrics["seconds"], **gaussian_now(metrics["trajectories"])})

    results = run_group([c for c, _ in todo], [o for _, o in todo], on_epoch=on_epoch, gpus=gpus)
    finals = [final_metrics(r) for r in results if r["status"] == COMPLETED]
    summary = {}
    if finals:  # the group's row at the end: the final probes' modal absorber, as each epoch's
        top, count = Counter(f["gaussian_top"] for f in finals).most_common(1)[0]
        summary = {"gaussian_top": f"{top} ({count}/{len(finals)})",
                   "gaussian_share": float(np.mean([f["gaussian_share"] for f in finals if f["gaussian_top"] == top])),
                   "test_accuracy": float(np.mean([f["test_accuracy"] for f in finals]))}
    tune.report({"done": True, "trials": len(config["seeds"]), "trained": len(todo), **summary})


def order_axes(values: dict, axes: list[str]) -> dict:
    return {a: values[a] for a in axes}
