"""Stage `pairs`: the SFT model answers the train prompts (and some eval prompts); its passing
answers, the SFT data and repairs give the chosen side, `selftune.data.pairs` the rejected one.
Writes pairs.jsonl (and eval_pairs.jsonl for held-out reward statistics).

Usage:
    selftune pairs --run runs/demo
    from selftune.stages.pairs import pairs_stage
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import Counter, defaultdict
from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.pairs import Chosen, Contrast, build_pairs, contrasts_for, prompt_messages
from selftune.data.prompts import answer_budgets
from selftune.data.records import SampleRecord, best_first, read_records
from selftune.errors import NoTrainingDataError
from selftune.generation.budget import generate_with_budgets
from selftune.generation.factory import UNHASHED_GENERATION_SETTINGS, open_configured, sampling_params
from selftune.generation.preflight import check_stage_prompts
from selftune.models import check_model_spec
from selftune.run.files import write_jsonl
from selftune.run.folder import Run
from selftune.run.plan import prompts_round
from selftune.run.spec import StageSpec
from selftune.scoring.registry import judges_with_policy, make_scorer, score_samples, scorer_inputs

logger = logging.getLogger("selftune.pairs")


class NoPairsError(NoTrainingDataError):
    """No training pair could be built: nothing passing to use as the chosen side."""


def group_samples(samples: list[SampleRecord], threshold: float, tie_break: str = "shortest") -> tuple[dict, dict]:
    """(best passing sample per prompt, failed samples per prompt); ties between equally scored
    passing samples are broken as the SFT data breaks them (`sft_data.tie_break`)."""
    rank = best_first(tie_break)
    best: dict[str, SampleRecord] = {}
    failed: dict[str, list[SampleRecord]] = defaultdict(list)
    for sample in samples:
        if sample.score >= threshold:
            current = best.get(sample.prompt_id)
            if current is None or rank(sample) < rank(current):
                best[sample.prompt_id] = sample
        else:
            failed[sample.prompt_id].append(sample)
    return best, failed


PAIRS_STAGE = StageSpec(
    "pairs",
    output="pairs",
    # The sample section holds the scorer, its threshold and the sampling settings pairs reuse.
    reads=(
        "pairs",
        "sample",
        "sft_data.tie_break",
        "model.dtype",
        "generation.backend",
        "generation.max_new_tokens",
        "generation.max_new_tokens_cap",
    ),
    # Which round's prompts are read is recorded with them (the inputs' sha256).
    unhashed=(*UNHASHED_GENERATION_SETTINGS, "prompts.fresh_each_round", "prompts.source"),
)


def pairs_stage(
    run: Run, cfg: PipelineConfig, *, round_number: int = 1, policy: str | None = None, generator=None, progress=None
) -> Path:
    """Sample the SFT model on train and eval prompts, then write train and held-out pairs."""
    cfg = PAIRS_STAGE.view(cfg)
    prompts_path = run.output_of("prompts", "prompts", round_number=prompts_round(cfg, round_number))
    eval_prompts_path = run.output_of("prompts", "prompts", round_number=1)  # the held-out split is round 1's
    sft_path = run.output_of("sft-data", "sft", round_number=round_number)
    base_path = run.output_of("sample", "samples", round_number=1)
    # This round's samples: its policy's own answers to its prompts (round 1's are the base's).
    round_path = run.output_of("sample", "samples", round_number=round_number)
    # The SFT model answers when pairs.k > 0, and judges when the scorer is a judge with no model of
    # its own; otherwise no model is read (policy None).
    needs_policy = bool(cfg.pairs.k) or judges_with_policy(cfg.sample.scorer)
    policy = (policy or str(run.output_of("sft", "merged", round_number=round_number))) if needs_policy else None
    train_prompts = [p for p in read_records(prompts_path, "prompts") if p.split == "train"]
    # Held-out pairs come from the first `pairs.eval_prompts` eval prompts: sampling them all costs
    # as much as the train prompts, for a diagnostic (held-out reward accuracy) that needs far fewer.
    held_out = [p for p in read_records(eval_prompts_path, "prompts") if p.split == "eval"]
    prompts = train_prompts + held_out[: cfg.pairs.eval_prompts if cfg.pairs.k else 0]
    sft_records = read_records(sft_path, "sft")
    base_samples = read_records(base_path, "samples")
    round_samples = read_records(round_path, "samples")
    inputs = {"prompts": prompts_path, "sft": sft_path, "base_samples": base_path}
    inputs.update(scorer_inputs(cfg, prompts, prompts_path))
    if round_number > 1:  # round 1's prompts and samples are the ones above
        inputs.update(eval_prompts=eval_prompts_path, round_samples=round_path)
    if policy and Path(policy).is_dir():
        inputs["policy"] = Path(policy)
    params = sampling_params(cfg, n=max(1, cfg.pairs.k), seed=cfg.pairs.seed + 1)
    threshold = cfg.sample.scorer.pass_threshold
    fit = None
    if policy and generator is None:
        check_model_spec(policy, trust_remote_code=cfg.model.trust_remote_code)
        if cfg.pairs.k:
            fit = check_stage_prompts(
                policy,
                [prompt_messages(p) for p in prompts],
                [p.id for p in prompts],
                answer_budgets(prompts, cfg.generation.max_new_tokens, cfg.generation.max_new_tokens_cap),
                cfg,
                "pairs",
            )
            prompts = [prompts[k] for k in fit.kept]
    start = run.begin(PAIRS_STAGE, cfg, inputs=inputs, round_number=round_number, facts={"policy": policy})
    if start.reused:
        return start.reused
    with start as stage, contextlib.ExitStack() as models:
        if fit and fit.skipped:
            stage.metrics.update(fit.record())
        gen = None
        if needs_policy:
            gen = generator or models.enter_context(open_configured(policy, cfg))
        # One scorer for the whole stage: a self-judging scorer judges with the SFT model.
        scorer = models.enter_context(make_scorer(cfg, gen))
        policy_samples: list[SampleRecord] = []
        if cfg.pairs.k:  # on-policy: the SFT model answers every train prompt (and some eval prompts)
            answers = generate_with_budgets(
                gen,
                [prompt_messages(p) for p in prompts],
                params,
                answer_budgets(prompts, cfg.generation.max_new_tokens, cfg.generation.max_new_tokens_cap),
                progress=progress,
            )
            policy_samples = score_samples(prompts, answers, scorer, policy)
            write_jsonl(stage.dir / "policy_samples.jsonl", policy_samples)
            stage.add_output("policy_samples", stage.dir / "policy_samples.jsonl")
        best, policy_failed = group_samples(policy_samples, threshold, cfg.sft_data.tie_break)
        _, base_failed = group_samples(base_samples, threshold)
        if not cfg.pairs.k:  # off-policy: this round's samples' failures serve as the policy's
            policy_failed = group_samples(round_samples, threshold)[1]
            base_failed = {} if round_number == 1 else base_failed
        use_contrasts = cfg.pairs.sources.get("original", 0) > 0 and cfg.sample.scorer.kind == "constraints"
        for split in ("train", "eval"):
            subset = [p for p in prompts if p.split == split]
            # The SFT model's best passing sample, else (train) the SFT data's answer.
            chosen = {pid: Chosen(s.completion, "policy") for pid, s in best.items()}
            contrasts: dict[str, list[Contrast]] = {}
            if split == "train":
                for record in sft_records:
                    source = getattr(record, "chosen_source", "sample")
                    chosen.setdefault(
                        record.id,
                        Chosen(record.completion[0].content, source if source.startswith("repair:") else "sft-data"),
                    )
            if use_contrasts:
                for prompt in subset:
                    contrasts[prompt.id] = contrasts_for(
                        prompt, policy_failed.get(prompt.id, []), cfg.pairs.pairs_per_prompt, cfg.pairs.seed
                    )
                by_id = {p.id: p for p in subset}
                for record in sft_records:  # the SFT data's own repairs, over the base answers they mend
                    original = getattr(record, "original", None)
                    if (
                        original
                        and record.id in by_id
                        and not any(c.original == original for c in contrasts[record.id])
                    ):
                        [score] = scorer.score(by_id[record.id], [original])
                        contrasts[record.id].append(
                            Contrast(record.completion[0].content, record.chosen_source, original, score.score)
                        )
            weights = dict(cfg.pairs.sources)
            if split == "eval":
                weights.pop("base", None)
            pairs, counts = build_pairs(
                subset,
                chosen=chosen,
                policy_failures=policy_failed,
                base_failures=base_failed,
                scorer=scorer,
                weights=weights,
                pairs_per_prompt=cfg.pairs.pairs_per_prompt,
                max_similarity=cfg.pairs.max_similarity,
                seed=cfg.pairs.seed,
                contrasts=contrasts,
            )
            if split == "train" and cfg.pairs.max_pairs and len(pairs) > cfg.pairs.max_pairs:
                keep = sorted(random.Random(cfg.pairs.seed).sample(range(len(pairs)), cfg.pairs.max_pairs))
                pairs = [pairs[k] for k in keep]
                counts = {
                    **counts,
                    "pairs": len(pairs),
                    "by_source": dict(Counter(p.negative_source for p in pairs)),
                    "by_chosen_source": dict(Counter(p.chosen_source.split(":")[0] for p in pairs)),
                    "before_max_pairs": counts["pairs"],
                }
            stage.metrics[split] = counts
            if not pairs and split == "train":
                raise NoPairsError(
                    f"pairs: no training pair from {len(subset)} train prompts ({counts}); "
                    "the SFT model and the SFT data gave no passing answer to build on"
                )
            if not pairs:  # DPO then trains without held-out reward statistics, and says so
                if not subset:
                    logger.info("pairs: no held-out pairs: pairs.eval_prompts is 0")
                elif cfg.pairs.k == 0:
                    logger.info(
                        "pairs: no held-out pairs: they need the SFT model's answers to eval prompts (pairs.k > 0)"
                    )
                else:
                    logger.warning(
                        "pairs: no held-out pair from %d eval prompts: the SFT model passed none of them", len(subset)
                    )
                continue
            name = "pairs" if split == "train" else "eval_pairs"
            write_jsonl(stage.dir / f"{name}.jsonl", pairs)
            stage.add_output(name, stage.dir / f"{name}.jsonl")
        if policy_samples:  # none when pairs.k is 0
            passed = sum(s.score >= threshold for s in policy_samples)
            stage.metrics["policy_sample_pass_rate"] = float(f"{passed / len(policy_samples):.4f}")
    return stage.dir / "pairs.jsonl"
