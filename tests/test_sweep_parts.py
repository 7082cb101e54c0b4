"""The sweep layer's parts that need no running Ray: the live-science summary each epoch reports,
the experiment-tracker registry and its config check, the variables a trial gets from the
driver, the shared-storage token a trial checks."""
from __future__ import annotations

import pytest

from study import plan, sweep, tracking, tune_trial, units
from study.config import validate_sweep
from study.errors import InputError


def point(**shares):
    return {"epoch": 3, "shares": shares}


def test_one_model_reports_its_top_class_its_share_and_every_share():
    got = units.gaussian_now([point(cat=0.2, dog=0.7, frog=0.1)])
    assert got == {"gaussian_top": "dog", "gaussian_share": 0.7,
                   "trajectory": {"cat": 0.2, "dog": 0.7, "frog": 0.1}}


def test_a_fused_group_reports_the_modal_top_class_how_many_and_its_mean_share():
    got = units.gaussian_now([point(cat=0.6, dog=0.4), point(cat=0.9, dog=0.1), point(cat=0.3, dog=0.7)])
    assert got == {"gaussian_top": "cat (2/3)", "gaussian_share": pytest.approx((0.6 + 0.9 + 0.3) / 3)}
    assert units.gaussian_now([]) == {}   # every model of the group diverged


def sweep_with_run(**run):
    return validate_sweep({"name": "s", "grid": {"seed": [0]}, "run": run})


def test_run_callbacks_default_to_none_and_accept_installed_trackers(monkeypatch):
    assert sweep_with_run().run["callbacks"] == []
    monkeypatch.setattr(tracking.Tracker, "installed", lambda self: True)
    assert sweep_with_run(callbacks=["mlflow", "wandb"]).run["callbacks"] == ["mlflow", "wandb"]


@pytest.mark.parametrize("value, where, problem", [
    ("mlflow", "run.callbacks", "must be a list"),
    (["tensorboard"], r"run.callbacks\[0\]", "unknown tracker"),
    (["mlflow", "mlflow"], "run.callbacks", "names a tracker twice"),
])
def test_bad_run_callbacks_name_the_key(monkeypatch, value, where, problem):
    monkeypatch.setattr(tracking.Tracker, "installed", lambda self: True)
    with pytest.raises(InputError, match=rf"{where}: {problem}"):
        sweep_with_run(callbacks=value)


def test_a_tracker_that_is_not_installed_says_which_extra_to_install(monkeypatch):
    monkeypatch.setattr(tracking.Tracker, "installed", lambda self: False)
    with pytest.raises(InputError, match=r"run.callbacks\[0\]: wandb is not installed.*noisesink\[wandb\]"):
        sweep_with_run(callbacks=["wandb"])


@pytest.mark.parametrize("name", sorted(tracking.TRACKERS))
def test_each_tracker_builds_tunes_own_logger_callback(name):
    """Known answer: the registry entry is Tune's integration for that tool, named after the study."""
    tracker = tracking.TRACKERS[name]
    if not tracker.installed():
        pytest.skip(f"{tracker.package} is not installed (pip install 'noisesink[{tracker.extra}]')")
    from ray.tune.logger import LoggerCallback
    (cb,) = sweep.tracker_callbacks([name], "mystudy")
    assert isinstance(cb, LoggerCallback)
    assert type(cb).__module__ == f"ray.air.integrations.{name}"
    assert getattr(cb, "experiment_name", None) == "mystudy" or getattr(cb, "project", None) == "mystudy"


def test_the_driver_passes_its_data_and_cache_settings_but_no_credentials(monkeypatch):
    for var in plan.WORKER_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NOISESINK_DATA", "s3://bucket/cifar10.tar")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "token")
    assert plan.worker_env() == {"NOISESINK_DATA": "s3://bucket/cifar10.tar"}
    assert not any(("SECRET" in v or "TOKEN" in v or "KEY" in v) for v in plan.WORKER_ENV)


def test_a_trial_sees_the_storage_only_with_the_drivers_token(tmp_path):
    assert tune_trial.storage_is_shared("s3://bucket/studies/x", None)       # a bucket is shared
    assert not tune_trial.storage_is_shared(str(tmp_path), "abc")            # no token: another disk
    (tmp_path / tune_trial.DRIVER_TOKEN).write_text("abc")
    assert tune_trial.storage_is_shared(str(tmp_path), "abc")
    assert not tune_trial.storage_is_shared(str(tmp_path), "another run")    # a stale folder
