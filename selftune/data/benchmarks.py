"""IFEval and IFBench, scored by their reference checkers, inside selftune's evaluation.

The prompts come from a local file in the benchmark's own JSONL format (`key`, `prompt`,
`instruction_id_list`, `kwargs`), or, online, from the public dataset through `datasets`. The
checkers are the reference implementations as the `if-verifiable` package ships them (Google's
IFEval checkers and AllenAI's IFBench ones; extra `benchmarks`), called one instruction at a time
through its own `evaluate_instructions`; nothing is rewritten here.

Metrics as the benchmarks define them: prompt-level (every instruction of a prompt followed) and
instruction-level accuracy, each strict (the answer as is) and loose (the answer or a variant
without its first line, last line, both, or with `*` removed, as the reference builds them). An
instruction whose checker needs a resource that cannot be loaded offline (nltk data) is listed by
name under `not_scored` and left out of numerator and denominator; a prompt with no scored
instruction left is left out of the prompt-level figures. To score them, install the nltk data
once: `python -m nltk.downloader punkt punkt_tab averaged_perceptron_tagger_eng stopwords`.

Benchmark prompts are for measuring only: they never enter training (a test checks that no
benchmark prompt text occurs in the built-in train prompts).

Usage:
    selftune evaluate --model base=builtin:smollm2-135m-instruct --benchmark ifeval=input_data.jsonl
    from selftune.data.benchmarks import load_benchmark, score_benchmark
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftune.errors import MissingExtraError, RecordError, SelftuneError

# Imported where used: datasets (0.9 s) only for a benchmark read from the hub, and the reference
# checkers (if-verifiable, nltk, langdetect) only when a benchmark is scored: an optional extra.

# name -> public dataset on the Hub (used online only, when no file is given)
DATASETS = {"ifeval": "google/IFEval", "ifbench": "allenai/IFBench_test"}


WHERE_TO_GET = (
    "IFEval's input_data.jsonl (541 prompts) and IFBench's IFBench_test.jsonl are in the public "
    "google/IFEval and allenai/IFBench_test datasets and in their reference repositories"
)


@dataclass(frozen=True)
class BenchmarkPrompt:
    key: str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


def parse_benchmark(item: str) -> tuple[str, Path | None]:
    """`ifeval`, `ifeval=PATH`, `ifbench` or `ifbench=PATH` -> (name, path or None)."""
    name, _, path = item.partition("=")
    name = name.strip().lower()
    if name not in DATASETS:
        raise ValueError(f"unknown benchmark {name!r}: use ifeval[=PATH] or ifbench[=PATH]")
    return name, Path(path).expanduser() if path else None


def pass_rates(groups: dict[str, list[tuple[bool, bool]]]) -> dict[str, dict]:
    """Per group (a constraint type, a benchmark instruction), sorted by name: how many
    instructions, and the share passed under strict and loose checking, from (strict, loose) pairs."""
    return {
        key: {
            "n": len(v),
            "strict": round(sum(s for s, _ in v) / len(v), 4),
            "loose": round(sum(lo for _, lo in v) / len(v), 4),
        }
        for key, v in sorted(groups.items())
    }


def load_benchmark(name: str, path: Path | None = None, limit: int | None = None) -> list[BenchmarkPrompt]:
    """The benchmark's prompts from `path` (validated; `file:line: field: problem` for bad rows), or
    from the public dataset when no path is given and the Hub can be reached."""
    rows = _read_file(Path(path)) if path else _read_hub(name)
    prompts = []
    problems = []
    for where, row in rows:
        problem = _problem(row)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        prompts.append(
            BenchmarkPrompt(
                key=str(row["key"]),
                prompt=row["prompt"],
                instruction_id_list=list(row["instruction_id_list"]),
                kwargs=[dict(k or {}) for k in row.get("kwargs") or []],
            )
        )
    if problems:
        raise RecordError(problems)
    if not prompts:
        raise RecordError([f"{path or name}: holds no benchmark prompts"])
    return prompts[:limit] if limit else prompts


def _problem(row) -> str | None:
    if not isinstance(row, dict):
        return f"record: expected a JSON object, got {type(row).__name__}"
    for name in ("key", "prompt", "instruction_id_list"):
        if name not in row:
            return f"{name}: missing"
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        return "prompt: expected non-empty text"
    ids = row["instruction_id_list"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return "instruction_id_list: expected a non-empty list of instruction ids"
    kwargs = row.get("kwargs") or []
    if not isinstance(kwargs, list) or (kwargs and len(kwargs) != len(ids)):
        return f"kwargs: expected a list of {len(ids)} objects, one per instruction"
    if not all(k is None or isinstance(k, dict) for k in kwargs):
        return "kwargs: every entry must be an object"
    return None


def _read_file(path: Path) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise RecordError([f"{path}: file not found"])
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise RecordError([f"{path}:{number}: json: {exc.msg} at column {exc.colno}"]) from None
    return rows


def _read_hub(name: str) -> list[tuple[str, Any]]:
    try:
        import datasets

        loaded = datasets.load_dataset(DATASETS[name])
    except Exception as exc:  # offline, or the Hub refused: say what to pass instead
        raise SelftuneError(
            f"benchmark {name}: could not load {DATASETS[name]} from the Hub ({type(exc).__name__}); offline, pass "
            f"the prompts file: --benchmark {name}=PATH ({WHERE_TO_GET})"
        ) from None
    split = loaded["train"] if "train" in loaded else loaded[next(iter(loaded))]
    return [(f"{DATASETS[name]}:{k + 1}", dict(row)) for k, row in enumerate(split)]


# ---------------------------------------------------------------------------------------------
# Scoring with the reference checkers
# ---------------------------------------------------------------------------------------------


def _registry(name: str) -> dict:
    """The reference checkers of `name`; MissingExtraError when they (or what they import) are not
    installed. `evaluate` calls this before any model loads, so a missing extra costs no generation."""
    hint = "IFEval/IFBench scoring needs their reference checkers: pip install 'selftune[benchmarks]'"
    if importlib.util.find_spec("if_verifiable") is None:
        raise MissingExtraError(hint)
    try:
        import langdetect  # noqa: F401  (the checkers' language rules; imported here to fail early)

        with _no_downloads():
            if name == "ifeval":
                from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
            else:
                from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    except ImportError as exc:
        raise MissingExtraError(f"{hint} (missing: {exc.name or exc})") from None
    return INSTRUCTION_DICT


def require_checkers(name: str) -> None:
    """Fail now, with the install command, if `name`'s reference checkers cannot be imported."""
    _registry(name)


@contextlib.contextmanager
def _no_downloads():
    """The IFBench checkers ask nltk to download data when imported; selftune never downloads at run
    time, so the request is turned into a no-op and the checkers that need the data are reported
    as not scored instead."""
    import nltk

    original = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = original


def _missing_resource(exc: LookupError) -> str:
    found = re.search(r"Resource\s+\W*([\w/.]+?)\W*\s+not found", str(exc))
    return f"nltk data '{found.group(1)}'" if found else f"{type(exc).__name__}: {str(exc).strip()[:80]}"


@contextlib.contextmanager
def _seeded(key: str):
    """Python's `random` seeded by `key` inside the block, its state restored after: a reference
    checker given an argument it cannot use draws one at random (IFEval's letter_frequency does for
    a letter that is not one ASCII letter), which would make the same answers score differently."""
    state = random.getstate()
    random.seed(key)
    try:
        yield
    finally:
        random.setstate(state)


def score_benchmark(name: str, prompts: list[BenchmarkPrompt], answers: list[str]) -> dict:
    """IFEval-defined metrics of `answers` (one per prompt, in order) with the reference checkers."""
    registry = _registry(name)
    import langdetect
    from if_verifiable.common import evaluate_instructions

    langdetect.DetectorFactory.seed = 0  # the reference's language checks are random otherwise
    unavailable: dict[str, str] = {}
    unknown: set[str] = set()
    graded: list[list[tuple[str, bool, bool]]] = []  # per prompt: (instruction, strict, loose)
    for prompt, answer in zip(prompts, answers):
        kwargs = prompt.kwargs or [{} for _ in prompt.instruction_id_list]
        results = []
        for instruction, instruction_kwargs in zip(prompt.instruction_id_list, kwargs):
            if instruction not in registry:
                unknown.add(instruction)
                continue
            if instruction in unavailable:
                continue
            try:
                with _seeded(f"{name}:{prompt.key}:{instruction}"):
                    outcome, _ = evaluate_instructions(
                        answer, [instruction], [instruction_kwargs], prompt.prompt, registry
                    )
            except LookupError as exc:  # nltk data not installed
                unavailable[instruction] = _missing_resource(exc)
                continue
            # An empty answer follows no instruction (the reference returns no result for it).
            results.append(
                (instruction, *((outcome[0].strict_pass, outcome[0].loose_pass) if outcome else (False, False)))
            )
        graded.append(results)
    # An instruction found unavailable on a later prompt is dropped from the earlier ones too.
    graded = [[r for r in results if r[0] not in unavailable] for results in graded]
    by_instruction: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for results in graded:
        for instruction, strict, loose in results:
            by_instruction[instruction].append((strict, loose))
    scored = [(prompt, results) for prompt, results in zip(prompts, graded) if results]
    instructions = [v for values in by_instruction.values() for v in values]
    n = max(1, len(scored))
    return {
        "prompts": len(scored),
        "prompt_strict": round(sum(all(s for _, s, _ in r) for _, r in scored) / n, 4),
        "prompt_loose": round(sum(all(lo for _, _, lo in r) for _, r in scored) / n, 4),
        "instruction_strict": round(sum(s for s, _ in instructions) / max(1, len(instructions)), 4),
        "instruction_loose": round(sum(lo for _, lo in instructions) / max(1, len(instructions)), 4),
        "instructions": len(instructions),
        "by_instruction": pass_rates(by_instruction),
        "not_scored": {
            **{i: f"needs {reason}" for i, reason in sorted(unavailable.items())},
            **{i: "no reference checker in if-verifiable" for i in sorted(unknown)},
        },
        "per_prompt": {prompt.key: all(s for _, s, _ in results) for prompt, results in scored},
    }
