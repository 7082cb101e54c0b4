"""Experiment trackers for a sweep (`run.callbacks`), each through Ray Tune's own integration.

A registry: name -> the package it needs (an optional extra of noisesink) and a constructor of
Tune's logger callback for a study. Tune calls the callback on the driver with every result a
trial reports (each epoch's training curve and Gaussian-noise top class and share, then the final
metrics) and with the trial's config (the grid point), so a tracker sees one run per Tune trial,
named after it, in an experiment (MLflow) or project (W&B) named after the study. Where results
go comes from each tool's own environment: MLFLOW_TRACKING_URI, WANDB_API_KEY / WANDB_MODE.
Nothing here imports Ray or the tracker until a sweep builds its callbacks.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Tracker:
    package: str          # the import the integration needs
    extra: str            # pip install 'noisesink[<extra>]' provides it
    make: Callable[[str], object]   # study name -> a ray.tune Callback

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


def _mlflow(study: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    # tracking_uri None: mlflow's own default (MLFLOW_TRACKING_URI, else ./mlruns)
    return MLflowLoggerCallback(experiment_name=study, tags={"noisesink_study": study})


def _wandb(study: str):
    from ray.air.integrations.wandb import WandbLoggerCallback
    return WandbLoggerCallback(project=study, group=study)


TRACKERS = {
    "mlflow": Tracker("mlflow", "mlflow", _mlflow),
    "wandb": Tracker("wandb", "wandb", _wandb),
}


def callbacks(names: list[str], study: str) -> list:
    return [TRACKERS[n].make(study) for n in names]
