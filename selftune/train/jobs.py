"""What a training process is handed: the typed jobs that cross from the selftune process (which
tokenizes the data once, decides whether to resume, merges and writes the manifest) to the code
that trains, in this process or in each `accelerate launch` child (`launch/job.json`).

    job = SFTJob(base="builtin:smollm2-135m-instruct", train_rows=rows, eval_rows=held, resuming=False)
    LaunchedJob(job, config=cfg.model_dump(mode="json"), out=stage_dir).write(stage_dir / "launch" / "job.json")
    LaunchedJob.read(path).job          # the same SFTJob, checked again on the other side
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# A tokenized, masked example: token ids with their labels (-100 where no loss is taken), and for
# pairs the chosen and rejected sides plus their prompt group and negative source.
Row = dict[str, Any]
Messages = list[dict[str, str]]

SFT_ROW_KEYS = ("input_ids", "labels")
DPO_ROW_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def _check_rows(stage: str, what: str, rows: list[Row], keys: tuple[str, ...]) -> None:
    for index, row in enumerate(rows):
        missing = [key for key in keys if key not in row]
        if missing:
            raise ValueError(f"{stage} job: {what}[{index}] has no {', '.join(missing)}")
        for ids, labels in zip(keys[::2], keys[1::2]):
            if len(row[ids]) != len(row[labels]):
                raise ValueError(f"{stage} job: {what}[{index}]: {ids} and {labels} differ in length")


@dataclass
class SFTJob:
    """LoRA SFT on `base`: masked training rows, held-out rows for the validation loss, and
    whether training resumes from the stage's last checkpoint."""

    stage: ClassVar[str] = "sft"
    base: str
    train_rows: list[Row]
    eval_rows: list[Row] = field(default_factory=list)
    resuming: bool = False

    def __post_init__(self):
        _check_rows(self.stage, "train_rows", self.train_rows, SFT_ROW_KEYS)
        _check_rows(self.stage, "eval_rows", self.eval_rows, SFT_ROW_KEYS)


@dataclass
class DPOJob:
    """DPO with a fresh LoRA on the merged SFT model `sft_model`: tokenized pairs, held-out pairs
    (each with its `pair_index`), whether training resumes, the prompts whose answer lengths are
    compared before and after, and `reference_model`, the model whose log-probs the policy's are
    measured against (None: `sft_model` itself, with the adapter disabled)."""

    stage: ClassVar[str] = "dpo"
    sft_model: str
    rows: list[Row]
    eval_rows: list[Row] = field(default_factory=list)
    resuming: bool = False
    length_prompts: list[Messages] = field(default_factory=list)
    reference_model: str | None = None

    def __post_init__(self):
        _check_rows(self.stage, "rows", self.rows, DPO_ROW_KEYS)
        _check_rows(self.stage, "eval_rows", self.eval_rows, DPO_ROW_KEYS)
        unnumbered = [index for index, row in enumerate(self.eval_rows) if "pair_index" not in row]
        if unnumbered:
            raise ValueError(f"dpo job: eval_rows[{unnumbered[0]}] has no pair_index")


@dataclass
class GRPOJob:
    """GRPO with a fresh LoRA on the merged DPO model `dpo_model`: the prompts it writes answers to
    (prompt records as JSON: id, messages, constraints), each answer's token budget, and whether
    training resumes."""

    stage: ClassVar[str] = "grpo"
    dpo_model: str
    prompts: list[dict[str, Any]]
    budgets: list[int]
    resuming: bool = False

    def __post_init__(self):
        if len(self.budgets) != len(self.prompts):
            raise ValueError(f"grpo job: {len(self.prompts)} prompts but {len(self.budgets)} budgets")
        for index, prompt in enumerate(self.prompts):
            missing = [key for key in ("id", "messages") if key not in prompt]
            if missing:
                raise ValueError(f"grpo job: prompts[{index}] has no {', '.join(missing)}")


TrainingJob = SFTJob | DPOJob | GRPOJob
JOBS: dict[str, type[SFTJob] | type[DPOJob] | type[GRPOJob]] = {"sft": SFTJob, "dpo": DPOJob, "grpo": GRPOJob}


@dataclass
class LaunchedJob:
    """What `launch/job.json` holds for `selftune.worker`: the job, the run's whole config (each
    child views it through the stage's spec again) and the stage folder it writes to."""

    job: TrainingJob
    config: dict[str, Any]
    out: Path

    def write(self, path: Path) -> None:
        data = {"stage": self.job.stage, "config": self.config, "out": str(self.out), "job": asdict(self.job)}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def read(cls, path: Path) -> LaunchedJob:
        data = json.loads(Path(path).read_text())
        if data.get("stage") not in JOBS:
            raise ValueError(f"{path}: stage must be one of {', '.join(JOBS)}, not {data.get('stage')!r}")
        return cls(job=JOBS[data["stage"]](**data["job"]), config=data["config"], out=Path(data["out"]))
