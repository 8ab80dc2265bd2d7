"""Stage `sft`: LoRA SFT on the rejection-sampled data, loss on response tokens only.

Examples are tokenized and masked once here (`selftune.train.masking.tokenize_dataset`) and fed to
transformers' Trainer as they are (no second masking on top). Rows whose response cannot be
located, or whose response was cut off entirely by `max_length`, are dropped and counted; the
stage fails when more than `sft.max_drop_share` of the rows are dropped. The training runs in
this process or in `accelerate launch` children (`selftune.train.sft`); the merge and the
manifest stay here.

Training: LoRA on every linear layer by default, gradient accumulation, cosine schedule with
warm-up, bf16 autocast where the hardware runs bf16 fast, optional gradient checkpointing,
length-grouped batches (less padding), periodic checkpoints and resume, held-out loss on a
validation slice, TensorBoard logs. A NaN or inf loss stops training with an error; the last
checkpoint written before it stays as the resume point.

Output folder:
    adapter/          LoRA adapter (safetensors), tokenizer and chat template, sft_config.yaml
    merged/           base + adapter merged (when sft.merge), safetensors, tokenizer
    checkpoints/      Trainer checkpoints (resume point)
    logs/             TensorBoard event files

Usage:
    selftune sft --run runs/demo
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.records import read_dataset
from selftune.run.folder import Run
from selftune.run.spec import StageSpec
from selftune.train.jobs import SFTJob
from selftune.train.launch import run_training
from selftune.train.masking import tokenize_dataset
from selftune.train.toolkit import (
    check_trainable,
    check_training_memory,
    record_adapter,
    resume_point,
    training_tokenizer,
)

logger = logging.getLogger("selftune.sft")


def split_validation(rows: list, share: float, seed: int) -> tuple[list, list]:
    if share <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = max(1, int(round(len(rows) * share)))
    held = set(order[:count])
    return [r for k, r in enumerate(rows) if k not in held], [r for k, r in enumerate(rows) if k in held]


SFT_STAGE = StageSpec(
    "sft",
    output=lambda cfg: "merged" if cfg.sft.merge else "adapter",
    # The processes make the effective batch; the launcher alone changes nothing.
    reads=("sft", "model.spec", "model.dtype", "model.load_in_4bit", "train.num_processes", "train.accelerate_config"),
    unhashed=("model.trust_remote_code", "train.launcher"),  # model.trust_remote_code: a load permission
)


def sft_stage(
    run: Run,
    cfg: PipelineConfig,
    *,
    round_number: int = 1,
    data_path: Path | None = None,
    base: str | None = None,
    progress=None,
) -> Path:
    """Train the SFT adapter (and merge it); returns the merged model dir, or the adapter dir.

    The data is tokenized and masked here, once; the training runs in this process or in the
    processes `train.launcher: accelerate` starts (`selftune.train.launch`); the merge and the manifest
    stay here."""

    cfg = SFT_STAGE.view(cfg)
    data_path = Path(data_path) if data_path else run.output_of("sft-data", "sft", round_number=round_number)
    base = base or cfg.model.spec
    records = read_dataset(data_path, "sft")  # selftune's or TRL's formats; validated before loading anything
    inputs = {"sft": data_path}
    if Path(base).is_dir():
        inputs["base"] = Path(base)
    check_trainable(base, cfg, "sft")
    start = run.begin(SFT_STAGE, cfg, inputs=inputs, round_number=round_number, facts={"base": base})
    if start.reused:
        return start.reused
    # Tokenized before the stage starts: rows that cannot be masked, or a batch that would not fit
    # in memory, stop it with its previous outputs and manifest untouched.
    tokenizer, separator = training_tokenizer(base, cfg)
    rows, dropped = tokenize_dataset(
        tokenizer,
        records,
        max_length=cfg.sft.max_length,
        response_separator=separator,
        max_drop_share=cfg.sft.max_drop_share,
        source=str(data_path),
    )
    longest = max((len(row["input_ids"]) for row in rows), default=0)
    estimate = check_training_memory(base, cfg, "sft", examples=len(rows), length=longest)
    with start as stage:
        train_rows, eval_rows = split_validation(rows, cfg.sft.validation_share, cfg.sft.seed)
        resuming = resume_point(stage)
        job = SFTJob(base=base, train_rows=train_rows, eval_rows=eval_rows, resuming=resuming)
        metrics = run_training(job, cfg, stage.dir, progress=progress)
        counts = dict(
            examples=len(records),
            train_examples=len(train_rows),
            validation_examples=len(eval_rows),
            dropped=dropped,
            resumed=resuming,
        )
        return record_adapter(stage, base, cfg, {**counts, **metrics}, merge=cfg.sft.merge, memory=estimate)
