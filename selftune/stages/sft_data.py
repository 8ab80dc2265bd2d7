"""Stage `sft-data`: per prompt, the best passing sample becomes an SFT example.

Prompts with no passing sample are left out and counted (a repair may stand in); ties between
equally good passing answers are broken by `sft_data.tie_break`; repeated (prompt, answer) pairs
are dropped when `sft_data.dedupe` is on. With `sft_data.replay`, a later round adds a share of
the earlier rounds' own examples (read through their recorded outputs), each tagged
`replay_round`. Output in TRL's conversational prompt/completion format.

Usage:
    selftune sft-data --run runs/demo

    from selftune.stages.sft_data import sft_data_stage, select_examples
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.records import PromptRecord, SampleRecord, SFTRecord, best_first, read_records
from selftune.data.repair import repair_answer, repair_candidates
from selftune.errors import NoTrainingDataError
from selftune.run.files import write_jsonl
from selftune.run.folder import Run
from selftune.run.plan import prompts_round
from selftune.run.spec import StageSpec


def repaired_example(prompt: PromptRecord, samples: list[SampleRecord], seed: int = 0):
    """(repaired answer, the sample it came from) for the first failing sample a repair fixes, or None."""

    texts = [s.completion for s in samples]
    for sample in repair_candidates(samples):
        fixed = repair_answer(
            prompt, sample.completion, siblings=[t for t in texts if t != sample.completion], seed=seed
        )
        if fixed is not None:
            return fixed, sample
    return None


def select_examples(
    prompts: list[PromptRecord],
    samples: list[SampleRecord],
    *,
    tie_break: str = "shortest",
    dedupe: bool = True,
    threshold: float = 1.0,
    repair: bool = False,
) -> tuple[list[SFTRecord], dict]:
    """Per prompt, the best passing sample (`chosen_source: sample`); with `repair`, a prompt with
    none gets its best repairable failing sample repaired (`chosen_source: repair:<checks>`)."""
    by_prompt: dict[str, list[SampleRecord]] = defaultdict(list)
    for sample in samples:
        by_prompt[sample.prompt_id].append(sample)
    unknown = sorted(set(by_prompt) - {p.id for p in prompts})
    if unknown:
        raise ValueError(f"samples refer to prompts missing from the prompt file: {', '.join(unknown[:5])}")
    rank = best_first(tie_break)
    examples, seen = [], set()
    no_passing = duplicates = 0
    sources: dict[str, int] = defaultdict(int)
    for prompt in prompts:
        passing = [s for s in by_prompt.get(prompt.id, []) if s.score >= threshold]
        if passing:
            best = min(passing, key=rank)
            text, source, origin = best.completion, "sample", best
        else:
            fixed = repaired_example(prompt, by_prompt.get(prompt.id, [])) if repair else None
            if fixed is None:
                no_passing += 1
                continue
            text, source, origin = fixed[0].text, fixed[0].source, fixed[1]
        key = (tuple(m.content for m in prompt.messages), text.strip())
        if dedupe and key in seen:
            duplicates += 1
            continue
        seen.add(key)
        sources["sample" if source == "sample" else "repair"] += 1
        examples.append(
            SFTRecord(
                id=prompt.id,
                prompt=[m.model_dump() for m in prompt.messages],
                completion=[{"role": "assistant", "content": text}],
                chosen_source=source,
                sample_index=origin.sample_index,
                source_model=origin.model,
                **({"score": origin.score} if source == "sample" else {"original": origin.completion}),
            )
        )
    sampled = sum(1 for p in prompts if by_prompt.get(p.id))
    stats = {
        "prompts": sampled,
        "examples": len(examples),
        "no_passing": no_passing,
        "duplicates_dropped": duplicates,
        "yield": round(len(examples) / max(sampled, 1), 4),
        "by_source": dict(sources),
    }
    return examples, stats


def replayed_examples(earlier: dict[int, list[SFTRecord]], count: int, seed: int = 0) -> list[SFTRecord]:
    """`count` of the earlier rounds' own examples (those not replayed there already), a seeded
    draw over all of them, each tagged `replay_round: <the round that made it>`. Its id gains
    `@r<round>`: where rounds share their prompts the same prompt id is in this round's examples
    already, and ids are unique within an SFT file."""
    pool = [
        (r, record)
        for r, records in sorted(earlier.items())
        for record in records
        if getattr(record, "replay_round", None) is None
    ]
    drawn = random.Random(seed).sample(pool, min(count, len(pool)))
    return [SFTRecord(**{**record.model_dump(), "id": f"{record.id}@r{r}"}, replay_round=r) for r, record in drawn]


# The pass threshold and the scorer kind decide which samples count as passing (a changed
# threshold used to leave stale SFT data "up to date").
SFT_DATA_STAGE = StageSpec(
    "sft-data",
    output="sft",
    reads=("sft_data", "sample.scorer.pass_threshold", "sample.scorer.kind"),
    # Which round's prompts are read is recorded with them (the inputs' sha256).
    unhashed=("prompts.fresh_each_round", "prompts.source"),
)


def sft_data_stage(
    run: Run,
    cfg: PipelineConfig,
    *,
    round_number: int = 1,
    samples_path: Path | None = None,
    prompts_path: Path | None = None,
) -> Path:
    cfg = SFT_DATA_STAGE.view(cfg)
    samples_path = Path(samples_path) if samples_path else run.output_of("sample", "samples", round_number=round_number)
    if prompts_path is None:
        prompts_path = run.output_of("prompts", "prompts", round_number=prompts_round(cfg, round_number))
    prompts_path = Path(prompts_path)
    samples = read_records(samples_path, "samples")  # validate every input before writing anything
    prompts = [p for p in read_records(prompts_path, "prompts") if p.split == "train"]
    inputs = {"samples": samples_path, "prompts": prompts_path}
    earlier: dict[int, list[SFTRecord]] = {}
    if cfg.sft_data.replay > 0:
        for r in range(1, round_number):
            path = run.output_of("sft-data", "sft", round_number=r)
            earlier[r] = read_records(path, "sft")
            inputs[f"sft-round-{r}"] = path
    start = run.begin(SFT_DATA_STAGE, cfg, inputs=inputs, round_number=round_number)
    if start.reused:
        return start.reused
    with start as stage:
        examples, stats = select_examples(
            prompts,
            samples,
            tie_break=cfg.sft_data.tie_break,
            dedupe=cfg.sft_data.dedupe,
            threshold=cfg.sample.scorer.pass_threshold,
            repair=cfg.sft_data.repair and cfg.sample.scorer.kind == "constraints",
        )
        if not examples:
            raise NoTrainingDataError(
                f"no prompt in {samples_path} has a passing sample: nothing to train on; "
                "sample more answers (sample.k, sample.retry_rounds) or lower "
                "sample.scorer.pass_threshold"
            )
        if earlier:
            replayed = replayed_examples(earlier, round(cfg.sft_data.replay * len(examples)), seed=round_number)
            examples += replayed
            stats["replayed"] = len(replayed)
        out = stage.dir / "sft.jsonl"
        write_jsonl(out, examples)
        stage.add_output("sft", out)
        stage.metrics.update(stats)
    return out
