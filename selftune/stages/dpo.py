"""Stage `dpo`: a fresh LoRA on the merged SFT model, trained on preference pairs
(`selftune.train.dpo`), then merged. The pairs are tokenized here, once; the training runs in this
process or in `accelerate launch` children; the merge and the manifest stay here.

Usage:
    selftune dpo --run runs/demo [--pairs preferences.jsonl]
"""

from __future__ import annotations

from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.records import read_dataset
from selftune.errors import LineageError
from selftune.models.specs import check_model_spec
from selftune.run.folder import Run
from selftune.run.manifest import resolve_recorded
from selftune.run.spec import StageSpec
from selftune.train.jobs import DPOJob
from selftune.train.launch import run_training
from selftune.train.logprobs import tokenize_pairs
from selftune.train.toolkit import (
    check_trainable,
    check_training_memory,
    record_adapter,
    resume_point,
    training_tokenizer,
)

DPO_STAGE = StageSpec(
    "dpo",
    output="merged",
    # DPO masks and truncates pairs with the SFT stage's separator and drop limit; the answer-length
    # drift check samples with the generation settings.
    reads=(
        "dpo",
        "model.dtype",
        "model.load_in_4bit",
        "sft.response_separator",
        "sft.max_drop_share",
        "generation.backend",
        "generation.max_new_tokens",
        "train.num_processes",  # the processes make the effective batch
        "train.accelerate_config",
    ),
    # A load permission, a batch size that greedy answers do not depend on, and the launcher; the
    # base model is read only as the reference of `dpo.reference: start | base`, hashed then as a fact.
    unhashed=("model.trust_remote_code", "generation.batch_size", "train.launcher", "model.spec"),
)


def reference_model(run: Run, cfg: PipelineConfig, round_number: int) -> str | None:
    """The model DPO measures its policy against, by `dpo.reference`: None for the SFT model itself
    (its adapter disabled), else the spec of the model to load: the run's base (`base`), or the
    model the round's sft stage recorded as its start (`start`: round 1's is the base)."""
    if cfg.dpo.reference == "sft":
        return None
    if cfg.dpo.reference == "base":
        return cfg.model.spec
    manifest = run.manifest("sft", round_number)
    if manifest is None or manifest.status != "complete":
        raise LineageError(
            f"dpo.reference: start is the model {run.root.name}/round-{round_number}/sft trained from, "
            "and that stage has not completed: run it first, or set dpo.reference: sft or base"
        )
    recorded = manifest.inputs.get("base")  # recorded when the start is a folder (every round after the first)
    return str(resolve_recorded(run.root, recorded.path)) if recorded else cfg.model.spec


def dpo_stage(
    run: Run,
    cfg: PipelineConfig,
    *,
    round_number: int = 1,
    pairs_path: Path | None = None,
    eval_pairs_path: Path | None = None,
    sft_model: str | None = None,
    progress=None,
    phase_progress=None,
) -> Path:
    """Train the DPO adapter on the merged SFT model and merge it; returns the merged DPO model dir.
    `progress` is a TrainerCallback over the optimizer steps; `phase_progress(label, done, total)`
    hears the reference pass before them. The pairs are tokenized here, once; the training runs
    in this process or in the processes `train.launcher: accelerate` starts (`selftune.train.launch`)."""

    cfg = DPO_STAGE.view(cfg)
    if eval_pairs_path is None and pairs_path is None:  # the run's held-out pairs go with its own pairs
        eval_pairs_path = run.optional_output("pairs", "eval_pairs", round_number=round_number)
    pairs_path = Path(pairs_path) if pairs_path else run.output_of("pairs", "pairs", round_number=round_number)
    sft_model = sft_model or str(run.output_of("sft", "merged", round_number=round_number))
    # selftune's or TRL's preference formats; every row validated before anything loads
    pairs = read_dataset(pairs_path, "pairs")
    eval_pairs = read_dataset(eval_pairs_path, "pairs") if eval_pairs_path else []
    inputs = {"pairs": pairs_path, "sft_model": Path(sft_model)}
    if eval_pairs_path:
        inputs["eval_pairs"] = Path(eval_pairs_path)
    reference = reference_model(run, cfg, round_number)
    facts = {}
    if reference is not None and Path(reference).is_dir():
        inputs["reference_model"] = Path(reference)
    elif reference is not None:
        facts["reference_model"] = reference
    check_trainable(sft_model, cfg, "dpo")
    if reference is not None:  # loaded for the reference pass only: a usable spec, before anything loads
        check_model_spec(reference, trust_remote_code=cfg.model.trust_remote_code)
    start = run.begin(DPO_STAGE, cfg, inputs=inputs, round_number=round_number, facts=facts)
    if start.reused:
        return start.reused
    # Tokenized before the stage starts: pairs that cannot be masked, or a batch that would not fit
    # in memory, stop it with its previous outputs and manifest untouched.
    tokenizer, separator = training_tokenizer(sft_model, cfg)
    rows, dropped = tokenize_pairs(
        tokenizer,
        pairs,
        max_length=cfg.dpo.max_length,
        response_separator=separator,
        max_drop_share=cfg.sft.max_drop_share,
        source=str(pairs_path),
    )
    eval_rows, _ = tokenize_pairs(
        tokenizer,
        eval_pairs,
        max_length=cfg.dpo.max_length,
        response_separator=separator,
        max_drop_share=1.0,
        source=str(eval_pairs_path),
    )
    # A step runs each pair's chosen and rejected answers: two sequences per pair.
    longest = max((len(row[side]) for row in rows for side in ("chosen_input_ids", "rejected_input_ids")), default=0)
    estimate = check_training_memory(sft_model, cfg, "dpo", examples=len(rows), length=longest, per_example=2)
    with start as stage:
        for index, row in enumerate(eval_rows):
            row["pair_index"] = index
        resuming = resume_point(stage)
        length_prompts = [
            [m.model_dump() for m in p.prompt] for p in (eval_pairs or pairs)[: cfg.dpo.length_check_prompts]
        ]
        job = DPOJob(
            sft_model=sft_model,
            rows=rows,
            eval_rows=eval_rows,
            resuming=resuming,
            length_prompts=length_prompts,
            reference_model=reference,
        )
        metrics = run_training(job, cfg, stage.dir, progress=progress, phase_progress=phase_progress)
        counts = dict(pairs=len(pairs), dropped=dropped, eval_pairs=len(eval_rows), resumed=resuming)
        return record_adapter(stage, sft_model, cfg, {**counts, **metrics}, memory=estimate)
