"""Stage `sft`: LoRA SFT on the rejection-sampled data, loss on response tokens only.

Examples are tokenized and masked once by `selftune.masking.tokenize_example` and fed to
transformers' Trainer as they are (no second masking on top). Rows whose response cannot be
located, or whose response was cut off entirely by `max_length`, are dropped and counted; the
stage fails when more than `sft.max_drop_share` of the rows are dropped.

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
    from selftune.sft import sft_stage
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import yaml

from selftune.errors import TooManyDroppedError
from selftune.masking import MaskingError, tokenize_example
from selftune.records import read_dataset
from selftune.runs import StageSpec
from selftune.training import (
    as_dataset,
    evaluation_seconds,
    final_evaluation,
    log_history,
    make_sft_trainer_class,
    prepare_checkpoints,
    recorded_train_loss,
    tracker_callbacks,
    training_arguments,
)

logger = logging.getLogger("selftune.sft")


def tokenize_dataset(
    tokenizer, records, *, max_length: int, response_separator: str | None, max_drop_share: float, source: str
) -> tuple[list[dict], dict]:
    """Masked rows and counts of dropped rows by reason; fails past `max_drop_share`."""
    rows, dropped = [], {}
    for record in records:
        example = {
            "prompt": [m.model_dump() for m in record.prompt],
            "completion": [m.model_dump() for m in record.completion],
        }
        try:
            rows.append(
                tokenize_example(tokenizer, example, max_length=max_length, response_separator=response_separator)
            )
        except MaskingError as exc:
            reason = type(exc).__name__
            dropped[reason] = dropped.get(reason, 0) + 1
    total_dropped = sum(dropped.values())
    if records and total_dropped / len(records) > max_drop_share:
        raise TooManyDroppedError(
            f"{source}: {total_dropped} of {len(records)} rows could not be masked ({dropped}); "
            f"more than sft.max_drop_share={max_drop_share}. Raise max_length or check the chat template."
        )
    return rows, dropped


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
    run, cfg, *, round_number: int = 1, data_path: Path | None = None, base: str | None = None, progress=None
) -> Path:
    """Train the SFT adapter (and merge it); returns the merged model dir, or the adapter dir.

    The data is tokenized and masked here, once; the training runs in this process or in the
    processes `train.launcher: accelerate` starts (`selftune.launch`); the merge and the manifest
    stay here."""
    from selftune.launch import run_training
    from selftune.merge import merge_adapter
    from selftune.models import check_lora_targets, check_model_spec, load_tokenizer

    cfg = SFT_STAGE.view(cfg)
    data_path = Path(data_path) if data_path else run.output_of("sft-data", "sft", round_number=round_number)
    base = base or cfg.model.spec
    records = read_dataset(data_path, "sft")  # selftune's or TRL's formats; validated before loading anything
    inputs = {"sft": data_path}
    if Path(base).is_dir():
        inputs["base"] = Path(base)
    check_model_spec(base, trust_remote_code=cfg.model.trust_remote_code)
    check_lora_targets(base, cfg.sft.lora.target_modules, "sft.lora.target_modules")
    start = run.begin(SFT_STAGE, cfg, inputs=inputs, round_number=round_number, facts={"base": base})
    if start.reused:
        return start.reused
    with start as stage:
        out = stage.dir
        tokenizer = load_tokenizer(base, trust_remote_code=cfg.model.trust_remote_code)
        separator = None if getattr(tokenizer, "chat_template", None) else cfg.sft.response_separator
        rows, dropped = tokenize_dataset(
            tokenizer,
            records,
            max_length=cfg.sft.max_length,
            response_separator=separator,
            max_drop_share=cfg.sft.max_drop_share,
            source=str(data_path),
        )
        train_rows, eval_rows = split_validation(rows, cfg.sft.validation_share, cfg.sft.seed)
        resuming = prepare_checkpoints(out, stage.fingerprint, stage="sft", finished_before=stage.finished_before)
        job = {"base": base, "train_rows": train_rows, "eval_rows": eval_rows, "resuming": resuming}
        metrics = run_training("sft", train_sft, cfg, out, job, progress=progress)
        adapter_dir = out / "adapter"
        stage.add_output("log_history", out / "log_history.json")
        stage.add_output("adapter", adapter_dir)
        stage.metrics.update(
            examples=len(records),
            train_examples=len(train_rows),
            validation_examples=len(eval_rows),
            dropped=dropped,
            resumed=resuming,
            **metrics,
        )
        if cfg.sft.merge:
            merged = merge_adapter(base, adapter_dir, out / "merged", trust_remote_code=cfg.model.trust_remote_code)
            stage.add_output("merged", merged.path)
            stage.metrics["merge_max_logit_diff"] = merged.max_logit_diff
            return merged.path
    return adapter_dir


def train_sft(cfg, out: Path, job: dict, *, progress=None, phase_progress=None) -> dict:
    """Train the LoRA adapter on `job`'s rows; in this process or in each `accelerate launch`
    process (every process trains its share of each batch; the main one writes the adapter and the
    log history). Returns the training metrics."""
    from transformers import DataCollatorForSeq2Seq

    from selftune.models import load_tokenizer, unload
    from selftune.training import launch_facts, launch_state, lora_model, save_adapter

    base, train_rows, eval_rows, resuming = job["base"], job["train_rows"], job["eval_rows"], job["resuming"]
    state, device = launch_state()
    tokenizer = load_tokenizer(base, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.padding_side = "right"
    # Before the model loads: DeepSpeed ZeRO-3 shards the weights as they load when it knows its config.
    args = training_arguments(cfg.sft, out, has_eval=bool(eval_rows), device=device)
    model = lora_model(base, cfg, cfg.sft, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = make_sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(eval_rows) if eval_rows else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, pad_to_multiple_of=None),
        processing_class=tokenizer,
        callbacks=tracker_callbacks(cfg.sft, out) + ([progress] if progress else []),
    )
    initial_eval = trainer.evaluate()["eval_loss"] if eval_rows else None
    started, started_step = time.perf_counter(), trainer.state.global_step
    result = trainer.train(resume_from_checkpoint=True if resuming else None)
    evaluating = evaluation_seconds(trainer, started_step)
    seconds = time.perf_counter() - started - evaluating
    final_eval = None
    if eval_rows:
        final_eval = (final_evaluation(trainer, started_step) or trainer.evaluate())["eval_loss"]
    adapter_dir = out / "adapter"
    save_adapter(trainer, model, tokenizer, adapter_dir, out, state)
    if state.is_main_process:
        (adapter_dir / "sft_config.yaml").write_text(
            yaml.safe_dump({"base": base, "sft": cfg.sft.model_dump(mode="json")})
        )
        (out / "log_history.json").write_text(json.dumps(log_history(trainer), indent=1))
    train_tokens = sum(len(r["input_ids"]) for r in train_rows) * cfg.sft.epochs
    trained_tokens = sum(sum(1 for label in r["labels"] if label != -100) for r in train_rows)
    metrics = dict(
        trainable_parameters=trainable,
        steps=result.global_step,
        train_seconds=round(seconds, 1),  # held-out evaluations during training excluded
        eval_seconds_in_training=round(evaluating, 1),
        tokens_per_second=round(train_tokens / seconds, 1) if not resuming else None,
        response_token_share=round(trained_tokens / max(1, sum(len(r["input_ids"]) for r in train_rows)), 4),
        eval_loss_before=initial_eval,
        eval_loss_after=final_eval,
        train_loss=recorded_train_loss(result, trainer, resuming),
        bf16=args.bf16,
        **launch_facts(state, cfg.sft),
    )
    del trainer
    unload(model)
    return metrics
