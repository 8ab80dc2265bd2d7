"""tracking.report_to: one tracker run per pipeline run holding every stage's metrics, the training
curves and the evaluation, with the config and lineage as parameters; tested offline."""

import shutil

import pytest

from selftune.errors import MissingExtraError
from selftune.tracking import check_trackers, flatten


def test_flatten_keeps_finite_numbers_only():
    data = {"a": {"b": 1, "c": [1, 2], "d": "x", "e": float("nan"), "f": True}, "g": 2.5}
    assert flatten(data, "s") == {"s/a/b": 1.0, "s/g": 2.5}


def test_a_tracker_that_is_not_installed_is_named_before_the_run(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(MissingExtraError, match="tracking.report_to names wandb"):
        check_trackers(["tensorboard", "wandb"])


def test_a_run_writes_tensorboard_events_and_an_mlflow_run_with_the_eval_metrics(
    finished_run, finished_run_settings, tiny_model_dir, tmp_path
):
    pytest.importorskip("mlflow")
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import selftune

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    cfg = selftune.load_config(
        "tiny",
        overrides=[f"model.spec={tiny_model_dir}", *finished_run_settings, "tracking.report_to=[tensorboard, mlflow]"],
    )
    steps = selftune.run_pipeline(run_dir, cfg, on_event=lambda line: None)
    assert all(step.action == "skipped" for step in steps)  # tracking changes no stage's hash

    events = EventAccumulator(str(next((run_dir / "tracking" / "tensorboard").glob("events.out.*")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert "round-1/sample/yield" in tags and "round-1/sft/curve/loss" in tags
    assert "round-1/evaluate/models/dpo/instruction_following/prompt_strict" in tags

    mlflow.set_tracking_uri((run_dir / "tracking" / "mlruns").as_uri())  # read with the same file store
    [found] = mlflow.search_runs(experiment_names=["selftune"], output_format="list")
    metrics, params = found.data.metrics, found.data.params
    assert "round-1/evaluate/models/base/instruction_following/prompt_strict" in metrics
    assert "round-1/dpo/curve/loss" in metrics
    assert params["dpo.beta"] == str(cfg.dpo.beta) and "lineage.round-1.sft.config_hash" in params
