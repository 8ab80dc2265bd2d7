"""Stage `pairs`: preference pairs with diverse negatives, each tagged with its source.

Chosen: the best passing answer of the SFT model's own samples for the prompt, else the SFT
data's answer. Rejected, mixed by `pairs.sources` weights among the sources a prompt has:

    policy                     a failed sample of the SFT model on the same prompt
    base                       a failed sample of the base model (round-1 `sample` stage)
    corrupt:truncate           the chosen answer cut short
    corrupt:violate-constraint an edit of the chosen answer that breaks one of the prompt's
                               constraints (confirmed failing by the checker)
    corrupt:off-topic          a passing answer to another prompt
    corrupt:repeat             degenerate repetition of the chosen answer's opening
    corrupt:break-format       the chosen answer with its layout and markup flattened
    original                   a failing sample of the SFT model, paired under its own repair
                               (`selftune.repair`): a minimal contrast, the chosen side being
                               the repaired answer (`chosen_source: repair:<checks>`)

Every pair records `negative_source`, `chosen_source` (policy: the SFT model's passing sample;
sft-data: the SFT data's sampled answer; repair:<checks>: a repaired answer) and both scores; the chosen must score higher than the
rejected; pairs whose sides are near-identical (difflib ratio >= `pairs.max_similarity`) are
dropped and counted. Held-out pairs for evaluation are built the same way from the eval prompts
(sources: policy and corruptions; the base model is not sampled on eval prompts).

Usage:
    selftune pairs --run runs/demo
    from selftune.negatives import build_pairs, CORRUPTIONS
"""

from __future__ import annotations

import difflib
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from selftune.constraints import check
from selftune.errors import SelftuneError
from selftune.records import PairRecord, PromptRecord, SampleRecord
from selftune.runs import StageSpec
from selftune.scoring import Scorer

logger = logging.getLogger("selftune.pairs")


class NoPairsError(SelftuneError):
    """No training pair could be built: nothing passing to use as the chosen side."""

Corruption = Callable[[str, PromptRecord, random.Random, dict], "str | None"]


def _truncate(text: str, prompt, rng, context) -> str | None:
    tokens = text.split(" ")
    if len(tokens) < 4:
        return None
    keep = max(1, int(len(tokens) * rng.uniform(0.2, 0.5)))
    return " ".join(tokens[:keep])


# Edits tried by violate-constraint; each keeps most of the answer but changes one property.
_EDITS: list[Callable[[str], str]] = [
    lambda t: t.upper(),
    lambda t: t.lower(),
    lambda t: t.capitalize() + " Also, Here Are Some Capitalized Words.",
    lambda t: re.sub(r"\s+", " ", t.replace(",", "")).strip(),
    lambda t: t.replace(". ", ", ").replace("\n", ", "),
    lambda t: t + "\n\nOne more thing, and another, and the end.",
    lambda t: "Well, here goes.\n\n" + t,
    lambda t: " ".join(t.split()[: max(1, len(t.split()) // 3)]),
    lambda t: (t + " ") * 3,
    lambda t: re.sub(r"[*<>\[\]\"{}]|SECTION \d+|P\.P?\.S\.?|\*{6}", "", t),
    lambda t: "\n".join(line for line in t.splitlines() if not re.match(r"^\s*[*-]\s", line)),
    lambda t: t + " the and is a of it very",
    lambda t: re.sub(r"[zqxjk]", "", t, flags=re.IGNORECASE),
    lambda t: t + " zzz qqq xxx jjj kkk zzz qqq xxx jjj kkk",
]


def _violate_constraint(text: str, prompt: PromptRecord, rng, context) -> str | None:
    constraints = list(prompt.constraints)
    rng.shuffle(constraints)
    edits = list(_EDITS)
    rng.shuffle(edits)
    for constraint in constraints:
        if not check(constraint.type, text, constraint.kwargs):
            continue
        for edit in edits:
            edited = edit(text)
            if edited.strip() and edited != text and not check(constraint.type, edited, constraint.kwargs):
                context["violated"] = constraint.type
                return edited
    return None


def _off_topic(text: str, prompt: PromptRecord, rng, context) -> str | None:
    others = [answer for pid, answer in context.get("passing_answers", {}).items() if pid != prompt.id]
    return rng.choice(others) if others else None


def _repeat(text: str, prompt, rng, context) -> str | None:
    words = text.split()
    if not words:
        return None
    opening = " ".join(words[: rng.randint(min(2, len(words)), min(6, len(words)))])  # a one-word answer too
    return " ".join([opening] * rng.randint(8, 16))


def _break_format(text: str, prompt, rng, context) -> str | None:
    """Flatten layout, markup and sentence punctuation into one run-on line."""
    flat = re.sub(r"[*#<>\[\]\"{}.,!?;:]|^\s*[-*]\s+", "", text, flags=re.MULTILINE)
    flat = re.sub(r"\s+", " ", flat).strip()
    return flat if flat and flat != text.strip() else None


CORRUPTIONS: dict[str, Corruption] = {
    "truncate": _truncate,
    "violate-constraint": _violate_constraint,
    "off-topic": _off_topic,
    "repeat": _repeat,
    "break-format": _break_format,
}


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _messages(prompt: PromptRecord) -> list[dict]:
    return [m.model_dump() for m in prompt.messages]


@dataclass(frozen=True)
class Chosen:
    """A prompt's chosen answer and where it came from (`sample`, `sft-data`, `repair:<checks>`)."""

    text: str
    source: str


@dataclass(frozen=True)
class Contrast:
    """A failing answer and its repair: the minimal-contrast pair (repair over original)."""

    repaired: str
    source: str  # repair:<checks>
    original: str
    original_score: float


def contrasts_for(prompt: PromptRecord, failures: list[SampleRecord], limit: int, seed: int) -> list[Contrast]:
    """Up to `limit` minimal contrasts from a prompt's failing samples (`selftune.repair`)."""
    from selftune.repair import repair_answer
    from selftune.sft_data import repair_candidates

    out: list[Contrast] = []
    texts = [s.completion for s in failures]
    for sample in repair_candidates(failures):
        if len(out) >= limit:
            break
        fixed = repair_answer(prompt, sample.completion, siblings=[t for t in texts if t != sample.completion], seed=seed)
        if fixed is not None:
            out.append(Contrast(fixed.text, fixed.source, sample.completion, sample.score))
    return out


NEGATIVE_SOURCES = ("policy", "base", "original")


def check_sources(weights: dict[str, float]) -> dict[str, float]:
    """`weights` unchanged, or ValueError naming unknown negative sources (also the config's check)."""
    unknown = [s for s in weights if s not in NEGATIVE_SOURCES and s.removeprefix("corrupt:") not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown negative sources {unknown}; known: {', '.join(NEGATIVE_SOURCES)}, "
                         + ", ".join(f"corrupt:{name}" for name in CORRUPTIONS))
    return weights


def build_pairs(
    prompts: list[PromptRecord],
    *,
    chosen: dict[str, Chosen],
    policy_failures: dict[str, list[SampleRecord]],
    base_failures: dict[str, list[SampleRecord]],
    scorer: Scorer,
    weights: dict[str, float],
    pairs_per_prompt: int,
    max_similarity: float,
    seed: int,
    contrasts: dict[str, list[Contrast]] | None = None,
) -> tuple[list[PairRecord], dict]:
    """Pairs for `prompts` with the given chosen answers and negative pools; returns (pairs, counts).

    Source `original` pairs a repaired answer over the failing answer it was repaired from
    (`contrasts`); every other source pairs the prompt's chosen answer over a negative. A prompt
    without a chosen answer falls back to its first contrast's repair."""
    check_sources(weights)
    contrasts = contrasts or {}
    rng = random.Random(seed)
    chosen = dict(chosen)
    for pid, pool in contrasts.items():
        if pid not in chosen and pool:
            chosen[pid] = Chosen(pool[0].repaired, pool[0].source)
    context: dict = {"passing_answers": {pid: c.text for pid, c in chosen.items()}}
    pairs: list[PairRecord] = []
    counts: Counter = Counter()
    chosen_counts: Counter = Counter()
    dropped: Counter = Counter()
    for prompt in prompts:
        if prompt.id not in chosen:
            dropped["no_chosen"] += 1
            continue
        main = chosen[prompt.id]
        [main_score] = scorer.score(prompt, [main.text])
        pools = {"policy": list(policy_failures.get(prompt.id, [])), "base": list(base_failures.get(prompt.id, [])),
                 "original": list(contrasts.get(prompt.id, []))}
        available = dict(weights)
        made = 0
        while made < pairs_per_prompt and available:
            names = list(available)
            source = rng.choices(names, [available[n] for n in names])[0]
            good, good_source, good_score = main.text, main.source, main_score.score
            if source in pools:
                if not pools[source]:
                    del available[source]
                    continue
                item = pools[source].pop(rng.randrange(len(pools[source])))
                if source == "original":
                    good, good_source, good_score = item.repaired, item.source, 1.0
                    bad, bad_score = item.original, item.original_score
                else:
                    bad, bad_score = item.completion, item.score
            else:
                del available[source]  # one pair per corruption per prompt
                bad = CORRUPTIONS[source.removeprefix("corrupt:")](good, prompt, rng, context)
                if bad is None:
                    dropped[f"{source}:not_applicable"] += 1
                    continue
                bad_score = scorer.score(prompt, [bad])[0].score
            if similarity(good.strip(), bad.strip()) >= max_similarity and source != "original":
                dropped["near_identical"] += 1
                continue
            if good.strip() == bad.strip() or not good_score > bad_score:
                dropped["rejected_not_worse"] += 1
                continue
            pairs.append(
                PairRecord(
                    id=f"{prompt.id}-{made}", prompt=_messages(prompt),
                    chosen=[{"role": "assistant", "content": good}],
                    rejected=[{"role": "assistant", "content": bad}],
                    negative_source=source, chosen_source=good_source, chosen_score=good_score, rejected_score=bad_score,
                )
            )
            counts[source] += 1
            chosen_counts[good_source.split(":")[0]] += 1
            made += 1
    return pairs, {"pairs": len(pairs), "by_source": dict(sorted(counts.items())),
                   "by_chosen_source": dict(sorted(chosen_counts.items())), "dropped": dict(sorted(dropped.items()))}


def group_samples(samples: list[SampleRecord], threshold: float) -> tuple[dict, dict]:
    """(best passing sample per prompt, failed samples per prompt)."""
    best: dict[str, SampleRecord] = {}
    failed: dict[str, list[SampleRecord]] = defaultdict(list)
    for sample in samples:
        if sample.score >= threshold:
            current = best.get(sample.prompt_id)
            if current is None or (sample.score, -len(sample.completion)) > (current.score, -len(current.completion)):
                best[sample.prompt_id] = sample
        else:
            failed[sample.prompt_id].append(sample)
    return best, failed


PAIRS_STAGE = StageSpec(
    "pairs", output="pairs",
    # The sample section holds the scorer, its threshold and the sampling settings pairs reuse.
    reads=("pairs", "sample", "model.dtype", "generation.backend", "generation.max_new_tokens"),
    unhashed=("generation.batch_size", "model.trust_remote_code"),  # per-answer seeds; a load permission
)


def pairs_stage(run, cfg, *, round_number: int = 1, policy: str | None = None, generator=None, progress=None) -> Path:
    """Sample the SFT model on train and eval prompts, then write train and held-out pairs."""
    import contextlib

    from selftune.generation import SamplingParams, open_generator
    from selftune.records import read_records
    from selftune.runs import write_jsonl
    from selftune.sample import make_scorer, score_samples

    cfg = PAIRS_STAGE.view(cfg)
    prompts_path = run.output_of("prompts", "prompts", round_number=1)
    sft_path = run.output_of("sft-data", "sft", round_number=round_number)
    base_path = run.output_of("sample", "samples", round_number=1)
    # The SFT model answers when pairs.k > 0, and judges when the scorer is a judge with no model of
    # its own; otherwise no model is read (policy None).
    self_judging = cfg.sample.scorer.kind == "judge" and cfg.sample.scorer.judge_model is None
    needs_policy = bool(cfg.pairs.k) or self_judging
    policy = (policy or str(run.output_of("sft", "merged", round_number=round_number))) if needs_policy else None
    all_prompts = read_records(prompts_path, "prompts")
    # Held-out pairs come from the first `pairs.eval_prompts` eval prompts: sampling them all costs
    # as much as the train prompts, for a diagnostic (held-out reward accuracy) that needs far fewer.
    prompts = [p for p in all_prompts if p.split == "train"] + \
        [p for p in all_prompts if p.split == "eval"][: cfg.pairs.eval_prompts if cfg.pairs.k else 0]
    sft_records = read_records(sft_path, "sft")
    base_samples = read_records(base_path, "samples")
    inputs = {"prompts": prompts_path, "sft": sft_path, "base_samples": base_path}
    if policy and Path(policy).is_dir():
        inputs["policy"] = Path(policy)
    params = SamplingParams(n=max(1, cfg.pairs.k), temperature=cfg.sample.temperature, top_p=cfg.sample.top_p,
                            max_new_tokens=cfg.generation.max_new_tokens, seed=cfg.pairs.seed + 1)
    threshold = cfg.sample.scorer.pass_threshold
    start = run.begin(PAIRS_STAGE, cfg, inputs=inputs, round_number=round_number, facts={"policy": policy})
    if start.reused:
        return start.reused
    with start as stage, contextlib.ExitStack() as models:
        gen = None
        if needs_policy:
            gen = generator or models.enter_context(open_generator(
                policy, backend=cfg.generation.backend, batch_size=cfg.generation.batch_size, dtype=cfg.model.dtype,
                trust_remote_code=cfg.model.trust_remote_code))
        # One scorer for the whole stage: a self-judging scorer judges with the SFT model.
        scorer = models.enter_context(make_scorer(cfg, gen))
        policy_samples: list[SampleRecord] = []
        if cfg.pairs.k:  # on-policy: the SFT model answers every train prompt (and some eval prompts)
            answers = gen.generate([_messages(p) for p in prompts], params, progress=progress)
            policy_samples = score_samples(prompts, answers, scorer, policy)
            write_jsonl(stage.dir / "policy_samples.jsonl", policy_samples)
            stage.add_output("policy_samples", stage.dir / "policy_samples.jsonl")
        best, policy_failed = group_samples(policy_samples, threshold)
        _, base_failed = group_samples(base_samples, threshold)
        if not cfg.pairs.k:  # off-policy: the base samples' failures serve as the policy's
            policy_failed, base_failed = base_failed, {}
        use_contrasts = cfg.pairs.sources.get("original", 0) > 0 and cfg.sample.scorer.kind == "constraints"
        for split in ("train", "eval"):
            subset = [p for p in prompts if p.split == split]
            # The SFT model's best passing sample, else (train) the SFT data's answer.
            chosen = {pid: Chosen(s.completion, "policy") for pid, s in best.items()}
            contrasts: dict[str, list[Contrast]] = {}
            if split == "train":
                for record in sft_records:
                    source = getattr(record, "chosen_source", "sample")
                    chosen.setdefault(record.id, Chosen(record.completion[0].content,
                                                        source if source.startswith("repair:") else "sft-data"))
            if use_contrasts:
                for prompt in subset:
                    contrasts[prompt.id] = contrasts_for(prompt, policy_failed.get(prompt.id, []),
                                                         cfg.pairs.pairs_per_prompt, cfg.pairs.seed)
                by_id = {p.id: p for p in subset}
                for record in sft_records:  # the SFT data's own repairs, over the base answers they mend
                    original = getattr(record, "original", None)
                    if original and record.id in by_id and not any(c.original == original for c in contrasts[record.id]):
                        [score] = scorer.score(by_id[record.id], [original])
                        contrasts[record.id].append(Contrast(record.completion[0].content, record.chosen_source,
                                                             original, score.score))
            weights = dict(cfg.pairs.sources)
            if split == "eval":
                weights.pop("base", None)
            pairs, counts = build_pairs(
                subset, chosen=chosen, policy_failures=policy_failed, base_failures=base_failed,
                scorer=scorer, weights=weights, pairs_per_prompt=cfg.pairs.pairs_per_prompt,
                max_similarity=cfg.pairs.max_similarity, seed=cfg.pairs.seed, contrasts=contrasts,
            )
            if split == "train" and cfg.pairs.max_pairs and len(pairs) > cfg.pairs.max_pairs:
                keep = sorted(random.Random(cfg.pairs.seed).sample(range(len(pairs)), cfg.pairs.max_pairs))
                pairs = [pairs[k] for k in keep]
                counts = {**counts, "pairs": len(pairs), "by_source": dict(Counter(p.negative_source for p in pairs)),
                          "by_chosen_source": dict(Counter(p.chosen_source.split(":")[0] for p in pairs)),
                          "before_max_pairs": counts["pairs"]}
            stage.metrics[split] = counts
            if not pairs and split == "train":
                raise NoPairsError(f"pairs: no training pair from {len(subset)} train prompts ({counts}); "
                                   "the SFT model and the SFT data gave no passing answer to build on")
            if not pairs:  # DPO then trains without held-out reward statistics, and says so
                if not subset:
                    logger.info("pairs: no held-out pairs: pairs.eval_prompts is 0")
                elif cfg.pairs.k == 0:
                    logger.info("pairs: no held-out pairs: they need the SFT model's answers to eval prompts "
                                "(pairs.k > 0)")
                else:
                    logger.warning("pairs: no held-out pair from %d eval prompts: the SFT model passed none of them",
                                   len(subset))
                continue
            name = "pairs" if split == "train" else "eval_pairs"
            write_jsonl(stage.dir / f"{name}.jsonl", pairs)
            stage.add_output(name, stage.dir / f"{name}.jsonl")
        if policy_samples:  # none when pairs.k is 0
            passed = sum(s.score >= threshold for s in policy_samples)
            stage.metrics["policy_sample_pass_rate"] = float(f"{passed / len(policy_samples):.4f}")
    return stage.dir / "pairs.jsonl"
