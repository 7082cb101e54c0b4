"""Experiment trackers for a sweep (`run.callbacks`), each through Ray Tune's own integration.

A registry: name -> the package it needs (an optional extra of noisesink), Ray Tune's logger
callback for it and that callback's arguments for a study. Tune calls the callback on the driver
with every result a trial reports (each epoch's training curve and Gaussian-noise top class and
share, then the final metrics) and with the trial's config (the grid point), so a tracker sees
one run per Tune trial, named after it, in an experiment (MLflow) or project (W&B) named after
the study. Where results go comes from each tool's own environment: MLFLOW_TRACKING_URI,
WANDB_API_KEY / WANDB_MODE. No Ray here: study/sweep.py builds the callbacks.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tracker:
    package: str          # the import the integration needs
    extra: str            # pip install 'noisesink[<extra>]' provides it
    callback: str         # Ray Tune's LoggerCallback for it, module.Class
    arguments: Callable[[str], dict]   # study name -> the callback's keyword arguments

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


TRACKERS = {
    # tracking_uri unset: mlflow's own default (MLFLOW_TRACKING_URI, else ./mlruns)
    "mlflow": Tracker("mlflow", "mlflow", "ray.air.integrations.mlflow.MLflowLoggerCallback",
                      lambda study: {"experiment_name": study, "tags": {"noisesink_study": study}}),
    "wandb": Tracker("wandb", "wandb", "ray.air.integrations.wandb.WandbLoggerCallback",
                     lambda study: {"project": study, "group": study}),
}
