"""The `function` scorer: a user verifier in TRL's reward-function convention.

A verifier is named by reference, `package.module:function`, `path/to/file.py:function` (a path
relative to the working directory) or `builtin:NAME` (the reference-answer verifiers of
`selftune.scoring.references`). It is called by keyword, as TRL's GRPOTrainer calls a reward
function, so one function serves both:

    fn(prompts=[messages, ...], completions=[[{"role": "assistant", "content": text}], ...],
       **columns) -> list[float | None]

`columns` are the prompt records' extra fields (for example `answer`), one list per field, the
value of a record without it None. Each score is a number in [0, 1] (a bool counts as 0 or 1), or
a dict {"score": number, ...} whose other keys are kept as the answer's check details, or None
(no verdict: the answer counts as failing, score 0). A score at or above
`scorer.pass_threshold` passes.

It runs user code by design: only the module or file the config names is imported, and only
when a stage scores with it. `check_verifier` imports it, binds its signature and calls it once
on a few prompts with a probe answer, before any model loads, so that a bad reference, a wrong
signature or a wrong return is one sentence naming the reference, not a traceback hours in.
`verifier_file` is the file whose sha256 enters a scoring stage's inputs: editing the verifier
reruns what it scored.

Usage:
    scorer = FunctionScorer("examples/verifier.py:ends_with_answer")
    [result] = scorer.score(prompt_record, ["... #### 42"])
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from selftune.data.records import PromptRecord
from selftune.errors import ConfigError, SelftuneError
from selftune.scoring.base import ScoreResult

BUILTIN_MODULE = "selftune.scoring.references"
PROBE_ANSWER = "A probe answer: the verifier is called once before any model loads. The answer is 0."
PROBE_PROMPTS = 4


class VerifierError(SelftuneError):
    """A verifier raised, or returned something other than one score per completion."""


def _split(ref: str) -> tuple[str, str]:
    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(
            f"verifier {ref!r}: expected 'package.module:function', 'path/to/file.py:function' or 'builtin:NAME'"
        )
    return target, name


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def verifier_file(ref: str) -> Path:
    """The source file of the verifier `ref` names (its sha256 goes into the stage's inputs)."""
    target, _ = _split(ref)
    if target == "builtin":
        return Path(__file__).with_name("references.py")
    if _is_file(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"verifier {ref!r}: no file {path.resolve()}")
        return path.resolve()
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"verifier {ref!r}: cannot import module {target!r} ({exc})") from None
    if spec is None:
        raise ConfigError(f"verifier {ref!r}: no module named {target!r} (is it installed or on PYTHONPATH?)")
    if not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"verifier {ref!r}: module {target!r} has no source file to record")
    return Path(spec.origin)


_LOADED: dict[tuple[str, str], Callable] = {}


def load_verifier(ref: str) -> Callable:
    """The function `ref` names, imported once per process and file content."""
    target, name = _split(ref)
    path = verifier_file(ref)
    key = (ref, hashlib.sha256(path.read_bytes()).hexdigest())
    if key in _LOADED:
        return _LOADED[key]
    try:
        if target == "builtin":
            module = importlib.import_module(BUILTIN_MODULE)
        elif _is_file(target):
            # A module name of its own per file content, so an edited file is read afresh.
            spec = importlib.util.spec_from_file_location(f"selftune_verifier_{key[1][:16]}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as exc:  # user code: any error while importing it is the verifier's
        raise ConfigError(f"verifier {ref!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if fn is None and target == "builtin":
        known = ", ".join(getattr(module, "BUILTIN_VERIFIERS", {}))
        raise ConfigError(f"verifier {ref!r}: no built-in verifier {name!r} (known: {known})")
    if fn is None:
        raise ConfigError(f"verifier {ref!r}: {path} defines no {name!r}")
    if not callable(fn):
        raise ConfigError(f"verifier {ref!r}: {name!r} in {path} is a {type(fn).__name__}, not a function")
    _LOADED[key] = fn
    return fn


def prompt_columns(prompts: Sequence[PromptRecord]) -> dict[str, list]:
    """The prompts' extra fields as columns, one value per prompt (None where a prompt lacks it)."""
    names: list[str] = []
    for prompt in prompts:
        names += [n for n in (prompt.model_extra or {}) if n not in names]
    return {n: [(p.model_extra or {}).get(n) for p in prompts] for n in names}


def _call(fn: Callable, ref: str, prompts: Sequence[PromptRecord], texts: Sequence[str], where: str) -> list:
    columns = prompt_columns(prompts)
    kwargs = {
        "prompts": [[m.model_dump(include={"role", "content"}) for m in p.messages] for p in prompts],
        "completions": [[{"role": "assistant", "content": text}] for text in texts],
        **columns,
    }
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        takes = ", ".join(kwargs)
        raise ConfigError(
            f"verifier {ref!r} cannot take the call fn({takes}) ({exc}); "
            "define it as fn(prompts, completions, **columns)"
        ) from None
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        pass
    try:
        scores = fn(**kwargs)
    except Exception as exc:  # user code
        raise VerifierError(f"verifier {ref!r} raised {type(exc).__name__}: {exc} (scoring {where})") from None
    if not isinstance(scores, (list, tuple)):
        raise VerifierError(
            f"verifier {ref!r} returned a {type(scores).__name__}, not a list of scores (scoring {where})"
        )
    if len(scores) != len(texts):
        raise VerifierError(
            f"verifier {ref!r} returned {len(scores)} scores for {len(texts)} completions "
            f"(one per completion, in order; scoring {where})"
        )
    return [_result(value, ref, where) for value in scores]


def _result(value, ref: str, where: str) -> tuple[float | None, dict]:
    details: dict = {}
    if isinstance(value, dict):
        details = {k: v for k, v in value.items() if k != "score"}
        if "score" not in value:
            raise VerifierError(f"verifier {ref!r} returned a dict without 'score' (scoring {where})")
        value = value["score"]
    if value is None:
        return None, details
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        try:  # numpy and torch scalars
            value = float(value)
        except (TypeError, ValueError):
            raise VerifierError(
                f"verifier {ref!r} returned {value!r} ({type(value).__name__}), not a number or None (scoring {where})"
            ) from None
    value = float(value)
    if not math.isfinite(value):
        raise VerifierError(f"verifier {ref!r} returned a non-finite score ({value}) (scoring {where})")
    if not 0 <= value <= 1:
        raise VerifierError(f"verifier {ref!r} returned {value}, outside [0, 1] (scoring {where})")
    return value, details


def check_verifier(ref: str, prompts: Sequence[PromptRecord], where: str) -> Path:
    """Import the verifier, check its signature and its columns (built-ins check each record's
    reference field), and call it once on up to `PROBE_PROMPTS` of `prompts` with a probe answer:
    a wrong return is a ConfigError here, before any model loads. `where` names the prompts'
    file for the messages. Returns the verifier's source file (for the stage's inputs)."""
    fn = load_verifier(ref)
    check_columns = getattr(fn, "check_columns", None)
    if check_columns is not None:  # a built-in reference verifier: every record's reference checked
        problems = [
            f"{where}: prompt {p.id}: {problem}" for p in prompts if (problem := check_columns(p.model_extra or {}))
        ]
        if problems:
            raise ConfigError(f"verifier {ref!r}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    probe = list(prompts[:PROBE_PROMPTS])
    if probe:
        try:
            _call(fn, ref, probe, [PROBE_ANSWER] * len(probe), f"a probe answer to {where}")
        except VerifierError as exc:
            raise ConfigError(str(exc)) from None
    return verifier_file(ref)


class FunctionScorer:
    """Scores with a verifier function (see the module docstring); `pass_threshold` decides pass."""

    name = "function"

    def __init__(self, ref: str, pass_threshold: float = 1.0):
        self.ref, self.pass_threshold = ref, pass_threshold
        self.fn = load_verifier(ref)

    def score(self, prompt: PromptRecord, completions: Sequence[str]) -> list[ScoreResult]:
        return self.score_many([prompt] * len(completions), completions)

    def score_many(self, prompts: Sequence[PromptRecord], completions: Sequence[str]) -> list[ScoreResult]:
        """One call for many (prompt, completion) pairs, in order."""
        if not completions:
            return []
        where = f"prompt {prompts[0].id}" if len({p.id for p in prompts}) == 1 else f"{len(prompts)} prompts"
        results = []
        for value, details in _call(self.fn, self.ref, prompts, completions, where):
            passed = value is not None and value >= self.pass_threshold
            checks = {**details, "verifier": passed}
            if value is None:
                checks["no_verdict"] = True
            results.append(ScoreResult(0.0 if value is None else value, passed, checks))
        return results
