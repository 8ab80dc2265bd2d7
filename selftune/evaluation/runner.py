"""Models evaluated side by side, one model in memory at a time.

For each model in turn: load it fresh from disk, run every metric, unload it (parameters to the
meta device, gc, accelerator cache emptied), record its peak memory and time, and check through a
weak reference that no model object survived; only then is the next model loaded. Adapters are
never stacked on a shared base: each model is a merged checkpoint on disk.

Metrics:
- on held-out eval prompts (greedy answers): instruction-following accuracy, prompt-level and
  instruction-level, strict and loose (IFEval's loose reading), and per constraint type; mean
  answer length in tokens; repetition rate (share of repeated word 4-grams);
- on held-out pairs: implicit reward accuracy and mean margin against the SFT reference
  (beta x [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]), chosen and rejected log-probs;
  perplexity of the held-out chosen answers;
- standard benchmarks (IFEval, IFBench) with their reference checkers, and lm-eval-harness tasks,
  inside the same loop.

Usage:
    from selftune.evaluation.runner import evaluate_models
    results = evaluate_models([("base", spec), ("tuned", path)], prompts, pairs, cfg)
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from selftune.data.benchmarks import load_benchmark, parse_benchmark, require_checkers, score_benchmark
from selftune.data.prompts import answer_budgets
from selftune.data.records import PairRecord, PromptRecord, message_text, read_records
from selftune.errors import SelftuneError
from selftune.evaluation.lmeval import check_tasks, run_tasks
from selftune.evaluation.metrics import answer_stats, instruction_following, pair_metrics, paired_comparison
from selftune.generation.budget import generate_with_budgets
from selftune.generation.factory import generates_in_children, open_configured
from selftune.generation.local import make_generator
from selftune.generation.preflight import check_prompts
from selftune.generation.types import SamplingParams, phase_progress
from selftune.models import load_model, load_tokenizer, resolve_model_path, selftune_home, unload
from selftune.run.files import sha256_path, write_json, write_jsonl
from selftune.scoring.function import FunctionScorer, check_verifier
from selftune.scoring.judge import judge_win_rate
from selftune.train.logprobs import PairCollator, sequence_logps, tokenize_pair
from selftune.train.masking import MaskingError
from selftune.train.masking import response_separator as masking_separator


class ModelLeakError(SelftuneError):
    """A model object survived its turn in the one-at-a-time loop."""


@torch.no_grad()
def pair_log_probs(
    model,
    tokenizer,
    pairs: list[PairRecord],
    *,
    max_length: int,
    response_separator: str | None,
    batch_size: int = 8,
    progress=None,
) -> list[tuple[float, float, int] | None]:
    """(chosen log-prob, rejected log-prob, chosen response tokens) per pair, masked and truncated
    exactly as DPO trained on them (`dpo.max_length`, `sft.response_separator`); None for a pair
    that cannot be masked (its response truncated away). `progress("held-out pairs", done, total)`."""

    separator = masking_separator(tokenizer, response_separator)
    rows: list[dict | None] = []
    for pair in pairs:
        try:
            rows.append(tokenize_pair(tokenizer, pair, max_length=max_length, response_separator=separator))
        except MaskingError:
            rows.append(None)
    collator = PairCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    kept = [k for k, row in enumerate(rows) if row is not None]
    out: list[tuple[float, float, int] | None] = [None] * len(rows)
    for start in range(0, len(kept), batch_size):
        if progress:
            progress("held-out pairs", start, len(kept))
        chunk = kept[start : start + batch_size]
        batch = collator([rows[k] for k in chunk])
        logps, counts = sequence_logps(model, *(batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")))
        half = len(chunk)
        for j, k in enumerate(chunk):
            out[k] = (logps[j].item(), logps[half + j].item(), int(counts[j]))
    if progress:
        progress("held-out pairs", len(kept), len(kept))
    return out


def answers_cache_path(spec: str, messages: list[list[dict]], max_new_tokens: int | list[int], cfg) -> Path:
    """Where a model's greedy answers to a prompt set are kept: keyed by the model's weights
    (sha256 of its checkpoint), the prompts' text and every setting that shapes an answer. A later
    evaluation of the same model on the same prompts (a run whose DPO changed, another run with the
    same base) reads them instead of generating again."""

    key = json.dumps(
        {
            "model": sha256_path(Path(resolve_model_path(spec))),
            "prompts": messages,
            # One budget for every prompt is keyed as that number (as answers cached before budgets were
            # per prompt), several as the list.
            "max_new_tokens": max_new_tokens
            if isinstance(max_new_tokens, int) or len(set(max_new_tokens)) > 1
            else max_new_tokens[0],
            "dtype": cfg.model.dtype,
            "backend": cfg.generation.backend,
            "engine": 1,  # bump when generation changes in a way that changes greedy answers
        },
        sort_keys=True,
    )
    return selftune_home() / "cache" / "answers" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _answers(generator, messages: list[list[dict]], budgets: int | list[int], progress=None) -> list[dict]:
    """Greedy answers within each prompt's token budget, as the fields evaluation keeps of them."""
    budgets = [budgets] * len(messages) if isinstance(budgets, int) else budgets
    answers = generate_with_budgets(generator, messages, SamplingParams(), budgets, progress=progress)
    return [
        {"text": a[0].text, "completion_tokens": a[0].completion_tokens, "finish_reason": a[0].finish_reason}
        for a in answers
    ]


def prompt_sets(prompts: list[PromptRecord], benchmarks: list[tuple[str, list]], cfg) -> list[tuple[str, list, Any]]:
    """The prompt sets a model answers: (label, messages, answer budget: one for all or one per
    prompt), the eval prompts' labelled `eval`, each benchmark's by its name."""
    sets: list[tuple[str, list, Any]] = []
    if prompts:
        budgets = answer_budgets(prompts, cfg.evaluate.max_new_tokens, cfg.evaluate.max_new_tokens_cap)
        sets.append(("eval", [[m.model_dump() for m in p.messages] for p in prompts], budgets))
    sets += [
        (bench, [p.messages() for p in bench_prompts], cfg.evaluate.benchmark_max_new_tokens)
        for bench, bench_prompts in benchmarks
    ]
    return sets


def fit_context(
    models: list[tuple[str, str]], prompts: list[PromptRecord], benchmarks: list[tuple[str, list]], cfg
) -> tuple[list[PromptRecord], list[tuple[str, list]], dict]:
    """Before any model loads: every prompt of every set, with its answer budget, within each
    model's context window (`selftune.generation.preflight`). With `generation.over_context: skip`
    the prompts over it are left out for every model, so that the models stay compared on the same
    prompts; returns the prompts kept and what was skipped, per set."""
    skipped: dict[str, set[str]] = defaultdict(set)
    for _, spec in models:
        for label, messages, budgets in prompt_sets(prompts, benchmarks, cfg):
            ids = [p.id for p in prompts] if label == "eval" else [p.key for p in dict(benchmarks)[label]]
            setting = "evaluate.max_new_tokens_cap" if label == "eval" else "evaluate.benchmark_max_new_tokens"
            fit = check_prompts(
                spec,
                messages,
                ids,
                budgets if isinstance(budgets, list) else [budgets] * len(messages),
                where=f"evaluate: {spec} on {label}",
                budget_setting=setting,
                over_context=cfg.generation.over_context,
                trust_remote_code=cfg.model.trust_remote_code,
            )
            skipped[label] |= {name for name, _, _ in fit.skipped}
    kept_prompts = [p for p in prompts if p.id not in skipped["eval"]]
    kept_benchmarks = [(name, [p for p in items if p.key not in skipped[name]]) for name, items in benchmarks]
    return kept_prompts, kept_benchmarks, {label: sorted(ids) for label, ids in skipped.items() if ids}


def evaluate_one(
    name: str,
    spec: str,
    prompts: list[PromptRecord],
    pairs: list[PairRecord],
    cfg,
    benchmarks: list[tuple[str, list]] = (),
    progress=None,
) -> tuple[dict, list]:
    """Load one model, measure everything, unload it; returns (metrics, per-prompt answers).

    With `evaluate.cache_answers`, greedy answers already generated for this model, prompt set and
    settings are read from the cache (`answers_cache_path`); the model is then loaded only for
    what the cache cannot give (held-out pairs, lm-eval tasks, prompt sets not cached yet).
    `benchmarks` [(name, prompts)] are answered with the model's greedy answers too and scored
    with their reference checkers (`selftune.data.benchmarks`). `progress(label, done, total)` follows
    each prompt set, the pairs and the lm-eval tasks (a `PhaseCallback`)."""

    started = time.perf_counter()
    sets = prompt_sets(prompts, benchmarks, cfg)
    caches = {
        label: answers_cache_path(spec, messages, tokens, cfg) if cfg.evaluate.cache_answers else None
        for label, messages, tokens in sets
    }
    generated: dict[str, list[dict]] = {
        label: json.loads(path.read_text())["answers"]
        for label, path in caches.items()
        if path is not None and path.is_file()
    }
    metrics: dict = {"spec": spec, "answers_from_cache": bool(sets) and all(label in generated for label, _, _ in sets)}
    report = None
    log_probs: list = []
    step = (lambda label, done, total: progress(f"{name}: {label}", done, total)) if progress else None
    missing = [(label, messages, tokens) for label, messages, tokens in sets if label not in generated]

    def answer_missing(generator) -> None:
        for label, messages, tokens in missing:
            generated[label] = _answers(generator, messages, tokens, phase_progress(step, label, len(messages)))
            if caches[label] is not None:
                write_json(caches[label], {"spec": spec, "answers": generated[label]})

    if missing and generates_in_children(cfg):
        # Replicas (or vLLM) hold the model in child processes; they are gone before this
        # process loads its own copy for the held-out pairs or lm-eval.
        with open_configured(spec, cfg) as generator:
            answer_missing(generator)
        missing = []
    if missing or pairs or cfg.evaluate.lm_eval.tasks:
        tokenizer = load_tokenizer(spec, trust_remote_code=cfg.model.trust_remote_code)
        model = load_model(spec, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
        alive = weakref.ref(model)
        if missing:
            answer_missing(
                make_generator(model, tokenizer, backend=cfg.generation.backend, batch_size=cfg.generation.batch_size)
            )
        log_probs = (
            pair_log_probs(
                model,
                tokenizer,
                pairs,
                max_length=cfg.dpo.max_length,
                response_separator=cfg.sft.response_separator,
                progress=step,
            )
            if pairs
            else []
        )
        if cfg.evaluate.lm_eval.tasks:
            metrics["lm_eval"] = run_tasks(model, tokenizer, cfg.evaluate.lm_eval, progress=step)
        report = unload(model)
        del model
        gc.collect()
        if alive() is not None:
            raise ModelLeakError(f"model {name} is still referenced after its turn; refusing to load the next one")
    texts = [a["text"] for a in generated.get("eval", [])]
    if prompts:
        following, details = instruction_following(prompts, texts, verifier=eval_verifier(cfg))
        metrics.update({"instruction_following": following, **answer_stats(generated["eval"])})
    else:
        details = []
    for bench, bench_prompts in benchmarks:
        scores = score_benchmark(bench, bench_prompts, [a["text"] for a in generated[bench]])
        metrics.setdefault("benchmarks", {})[bench] = {
            **scores,
            **answer_stats(generated[bench]),
            "max_new_tokens": cfg.evaluate.benchmark_max_new_tokens,
        }
    metrics.update(
        peak_memory_gib=round(report.peak_gib, 3) if report else None, seconds=round(time.perf_counter() - started, 1)
    )
    per_prompt = [
        {"prompt_id": p.id, "model": name, "answer": t, **{k: v for k, v in d.items() if k != "prompt_id"}}
        for p, t, d in zip(prompts, texts, details)
    ]
    # Every benchmark answer as it was scored, so a user can read and rescore it (lm-eval's
    # --log_samples); `strict` is None for a prompt none of whose instructions could be checked.
    bench_answers = [
        {
            "benchmark": bench,
            "key": prompt.key,
            "model": name,
            "prompt": prompt.prompt,
            "response": answer["text"],
            "completion_tokens": answer["completion_tokens"],
            "finish_reason": answer["finish_reason"],
            "strict": metrics["benchmarks"][bench]["per_prompt"].get(prompt.key),
        }
        for bench, bench_prompts in benchmarks
        for prompt, answer in zip(bench_prompts, generated[bench])
    ]
    return {"metrics": metrics, "log_probs": log_probs, "benchmark_answers": bench_answers}, per_prompt


def eval_verifier(cfg) -> FunctionScorer | None:
    """The verifier function that judges the eval prompts beside their constraints, if configured."""
    scorer = cfg.sample.scorer
    return FunctionScorer(scorer.function, pass_threshold=scorer.pass_threshold) if scorer.kind == "function" else None


def load_benchmarks(cfg) -> list[tuple[str, list]]:
    """The configured benchmarks' prompts (`evaluate.benchmarks`), read and checked before any
    model loads, and the lm-eval tasks checked (`selftune.evaluation.lmeval.check_tasks`)."""

    out = []
    for item in cfg.evaluate.benchmarks:
        name, path = parse_benchmark(item)
        require_checkers(name)
        out.append((name, load_benchmark(name, path, cfg.evaluate.benchmark_limit)))
    check_tasks(cfg.evaluate.lm_eval)
    return out


def round_references(names: list[str]) -> dict[str, str]:
    """Each model's pair-metric reference: its own round's SFT model (`dpo-r2` -> `sft-r2`), since
    each round's DPO trained against that round's merged SFT model; models of no round (`base`)
    are measured against the first SFT model."""
    sft = [name for name in names if name.split("-")[0] == "sft"]
    references = {}
    for name in names:
        suffix = name.partition("-")[2]
        own = f"sft-{suffix}" if suffix else "sft"
        if own in names:
            references[name] = own
        elif sft:
            references[name] = sft[0]
    return references


def evaluate_models(
    models: list[tuple[str, str]],
    prompts: list[PromptRecord],
    pairs: list[PairRecord],
    cfg,
    *,
    reference: str | dict[str, str] | None = "sft",
    baseline: str = "base",
    on_model=None,
    progress=None,
    benchmarks: list[tuple[str, list]] | None = None,
) -> dict:
    """Evaluate `models` [(name, spec)] in order, one at a time; pair margins against `reference`
    (one model's name for all, or each model's own: {name: reference name}); prompt-level strict
    accuracy (built-in eval and each benchmark) compared with `baseline`, with its noise (`vs_base`).
    `progress(label, done, total)` follows each model's prompt sets, pairs and lm-eval tasks.
    `benchmarks`: from `load_benchmarks(cfg)` when the caller has them already."""
    benchmarks = load_benchmarks(cfg) if benchmarks is None else benchmarks
    if prompts and cfg.sample.scorer.kind == "function":  # the verifier checked before a model loads
        check_verifier(cfg.sample.scorer.function, prompts, "the eval prompts")
    prompts, benchmarks, over_context = fit_context(models, prompts, benchmarks, cfg)
    results: dict = {"models": {}, "order": [name for name, _ in models]}
    if over_context:
        results["over_context_skipped"] = {label: len(ids) for label, ids in over_context.items()}
        results["over_context_ids"] = over_context
    answers: list[dict] = []
    bench_answers: list[dict] = []
    log_probs: dict[str, list] = {}
    for name, spec in models:
        outcome, per_prompt = evaluate_one(name, spec, prompts, pairs, cfg, benchmarks, progress=progress)
        results["models"][name] = outcome["metrics"]
        log_probs[name] = outcome["log_probs"]
        answers += per_prompt
        bench_answers += outcome["benchmark_answers"]
        if on_model:
            on_model(name, outcome["metrics"])
    references = reference if isinstance(reference, dict) else {name: reference for name, _ in models}
    references = {name: ref for name, ref in references.items() if ref in log_probs and name in log_probs}
    if pairs and references:
        for name, ref in references.items():
            results["models"][name]["pairs"] = pair_metrics(log_probs[name], log_probs[ref], pairs, cfg.dpo.beta)
        results["references"] = references
        if len(set(references.values())) == 1:
            results["reference"] = next(iter(references.values()))
    if cfg.evaluate.judge and baseline in results["models"]:
        results["judge"] = judge_models(answers, prompts, baseline, cfg)
        for name, outcome in results["judge"]["vs_" + baseline].items():
            results["models"][name]["judge_win_rate"] = outcome["win_rate"]
    passed = defaultdict(list)  # model -> prompt-level strict pass per prompt, in prompt order
    for row in answers:
        passed[row["model"]].append(all(row["strict"]))
    if baseline in results["models"]:
        for name in results["models"]:
            if name != baseline:
                _compare(results, passed, benchmarks, name, baseline, "vs_" + baseline)
    for name in results["models"]:  # each round's final model against the round before's
        previous = previous_round(name, list(results["models"]))
        if previous in results["models"]:
            _compare(results, passed, benchmarks, name, previous, "vs_previous")
        dpo = same_round_dpo(name)  # a grpo model against the DPO model it started from
        if dpo in results["models"]:
            _compare(results, passed, benchmarks, name, dpo, "vs_dpo")
    results["answers"] = answers
    results["benchmark_answers"] = bench_answers
    return results


def previous_round(name: str, names: list[str] | None = None) -> str | None:
    """The previous round's final model of a round's DPO or grpo model (`dpo-r3` -> `dpo-r2`),
    else None. With grpo in the run (`names` holds `grpo-r2`), round 3 started from `grpo-r2`: that
    is the previous model of both `dpo-r3` and `grpo-r3`."""
    kind, _, suffix = name.partition("-r")
    if kind not in ("dpo", "grpo") or not suffix.isdigit() or int(suffix) < 2:
        return None
    before = int(suffix) - 1
    return f"grpo-r{before}" if f"grpo-r{before}" in (names or []) else f"dpo-r{before}"


def same_round_dpo(name: str) -> str | None:
    """The DPO model a grpo model was trained from (`grpo-r2` -> `dpo-r2`, `grpo` -> `dpo`), else None."""
    kind, dash, suffix = name.partition("-")
    return f"dpo{dash}{suffix}" if kind == "grpo" else None


def _compare(results: dict, passed: dict, benchmarks: list, name: str, other: str, key: str) -> None:
    """Model `name` against model `other`, paired: on the eval prompts and on each benchmark."""
    if passed.get(name) and passed.get(other):
        results["models"][name][key] = paired_comparison(passed[name], passed[other])
    for bench, _ in benchmarks:
        ours = results["models"][name]["benchmarks"][bench]["per_prompt"]
        theirs = results["models"][other]["benchmarks"][bench]["per_prompt"]
        if set(theirs) == set(ours):
            keys = sorted(ours)
            results["models"][name]["benchmarks"][bench][key] = paired_comparison(
                [ours[k] for k in keys], [theirs[k] for k in keys]
            )


BENCHMARK_ANSWERS = "benchmark_answers.jsonl"


def write_results(out_dir: Path, results: dict) -> Path:
    """results.json (metrics per model), answers.jsonl (every answer to the eval prompts) and, when
    benchmarks ran, benchmark_answers.jsonl (every benchmark answer: benchmark, key, model, prompt,
    response, completion_tokens, finish_reason, strict) in `out_dir`."""

    results = dict(results)
    write_jsonl(Path(out_dir) / "answers.jsonl", results.pop("answers"))
    bench_answers = results.pop("benchmark_answers", [])
    if bench_answers:
        write_jsonl(Path(out_dir) / BENCHMARK_ANSWERS, bench_answers)
    write_json(Path(out_dir) / "results.json", results)
    return Path(out_dir) / "results.json"


def eval_prompts(path: Path, scorer_kind: str = "constraints") -> list[PromptRecord]:
    """The held-out prompts of a prompt file: split eval, with constraints to check (with a
    verifier function, every eval prompt: the verifier judges them)."""

    verified = scorer_kind == "function"
    prompts = [p for p in read_records(path, "prompts") if p.split == "eval" and (p.constraints or verified)]
    if not prompts:
        raise SelftuneError(f"{path}: no eval prompts {'' if verified else 'with constraints '}to evaluate on")
    return prompts


def parse_model_specs(items: list[str]) -> list[tuple[str, str]]:
    """`NAME=SPEC` or a bare SPEC (named by its position) -> [(name, spec)]."""
    models = []
    for k, item in enumerate(items):
        name, sep, spec = item.partition("=")
        models.append((name, spec) if sep and name and "/" not in name else (f"model{k + 1}", item))
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise SelftuneError(f"model names must differ: {names}")
    return models


def judge_models(answers: list[dict], prompts: list[PromptRecord], baseline: str, cfg) -> dict:
    """Judge win-rate of every model against `baseline`, positions swapped (see `judge_win_rate`).

    Runs after the last evaluated model is unloaded, so the judge is the only model in memory.
    """

    spec = cfg.evaluate.judge_model or cfg.model.spec
    by_model: dict[str, dict[str, str]] = defaultdict(dict)
    for row in answers:
        by_model[row["model"]][row["prompt_id"]] = row["answer"]
    requests = [message_text(p.messages) for p in prompts]
    outcome: dict = {"judge": spec, f"vs_{baseline}": {}}
    with open_configured(spec, cfg) as judge:
        for name, texts in by_model.items():
            if name != baseline:
                outcome[f"vs_{baseline}"][name] = judge_win_rate(
                    judge, requests, [texts[p.id] for p in prompts], [by_model[baseline][p.id] for p in prompts]
                )
    return outcome
