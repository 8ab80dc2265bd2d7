"""Every metric of a pipeline run, sent to the experiment trackers named in `tracking.report_to`.

One tracker run per pipeline run. After each stage (run or reused) its recorded metrics go out
as scalars named `round-N/STAGE/KEY` with the stage's place in the plan as the step; the SFT and
DPO training curves (their `log_history`) go out at their own steps; the evaluation's results
(every model's instruction following, pair metrics, benchmarks) go out flattened. The run's
config and every stage's config hash and output digests are logged once as parameters.

TensorBoard writes event files under RUN/tracking/tensorboard; MLflow logs to
`tracking.mlflow_uri` (default: a local file store, RUN/tracking/mlruns); wandb follows its own
environment (WANDB_MODE=offline works without network).

Usage:
    selftune run --preset demo --set "tracking.report_to=[tensorboard, mlflow]"
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from selftune.errors import MissingExtraError

# The trackers are imported when a run uses them: TensorBoard's writer (2 s), and mlflow and wandb
# (the optional `tracking` extra).

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def flatten(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {"a/b/c": value}; lists, strings and NaN are left out."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix] = float(data)
    return out


def check_trackers(names: list[str]) -> None:
    """Each named tracker's package is installed (checked before the run starts)."""
    for name in names:
        if importlib.util.find_spec(EXTRAS[name]) is None:
            raise MissingExtraError(f"tracking.report_to names {name}, which is not installed: pip install {name}")


class Trackers:
    """The open tracker runs of one pipeline run."""

    def __init__(self, run, cfg):
        self.names = list(cfg.tracking.report_to)
        self.root = Path(run.root)
        self._tensorboard = self._mlflow = self._wandb = None
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.root / "tracking" / "tensorboard"))
        if "mlflow" in self.names:
            import mlflow

            if not cfg.tracking.mlflow_uri:
                # The default is a local file store: no server, no database. MLflow 3.x keeps that
                # backend but refuses it unless asked for explicitly.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(cfg.tracking.mlflow_uri or (self.root / "tracking" / "mlruns").as_uri())
            mlflow.set_experiment(cfg.tracking.project)
            self._mlflow = mlflow.start_run(run_name=self.root.name)
        if "wandb" in self.names:
            import wandb

            self._wandb = wandb.init(project=cfg.tracking.project, name=self.root.name, dir=str(self.root / "tracking"))

    def params(self, params: dict[str, Any]) -> None:
        flat = {k: str(v)[:500] for k, v in _flat_params(params).items()}
        if self._tensorboard:
            self._tensorboard.add_text("params", "\n".join(f"{k}: {v}  " for k, v in sorted(flat.items())))
        if self._mlflow:
            import mlflow

            mlflow.log_params(flat)
        if self._wandb:
            self._wandb.config.update(flat, allow_val_change=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if not values:
            return
        if self._tensorboard:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, step)
        if self._mlflow:
            import mlflow

            mlflow.log_metrics({_mlflow_name(k): v for k, v in values.items()}, step=step)
        if self._wandb:
            self._wandb.log(values, step=step)

    def stage(self, run, stage: str, round_number: int, step: int) -> None:
        """Send one finished stage's metrics (and its curves or results) to the trackers."""
        manifest = run.manifest(stage, round_number)
        if manifest is None:
            return
        prefix = f"round-{round_number}/{stage}"
        self.scalars(flatten(manifest.metrics, prefix), step)
        if stage in ("sft", "dpo", "grpo") and "log_history" in manifest.outputs:
            curves: dict[int, dict[str, float]] = {}
            for entry in json.loads(run.output_of(stage, "log_history", round_number).read_text()):
                if "step" in entry:
                    values = flatten({k: v for k, v in entry.items() if k not in ("step", "epoch")}, f"{prefix}/curve")
                    curves.setdefault(int(entry["step"]), {}).update(values)
            for curve_step, values in sorted(curves.items()):
                self.scalars(values, curve_step)
        if stage == "evaluate" and "results" in manifest.outputs:
            results = json.loads(run.output_of(stage, "results", round_number).read_text())
            self.scalars(flatten(results.get("models", {}), f"{prefix}/models"), step)

    def close(self) -> None:
        if self._tensorboard:
            self._tensorboard.close()
        if self._mlflow:
            import mlflow

            mlflow.end_run()
        if self._wandb:
            self._wandb.finish()


def _flat_params(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat_params(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _mlflow_name(name: str) -> str:
    # MLflow allows letters, digits, _ - . / and spaces in metric names.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def lineage(manifests) -> dict[str, str]:
    """Every stage's config hash and output digests, as tracker parameters; `manifests` are
    (step, manifest) pairs (`selftune.pipeline.stage_manifests`)."""
    out = {}
    for step, manifest in manifests:
        if manifest:
            key = f"lineage.round-{step.round_number}.{step.stage}"
            out[f"{key}.config_hash"] = manifest.config_hash
            for name, ref in manifest.outputs.items():
                out[f"{key}.{name}"] = ref.sha256[:16]
    return out
