"""Before a model generates, from its config and tokenizer only (no weights): every prompt, with its
answer budget, within the model's context window. A prompt over it is an error naming it, or, where
the user asks for it (`generation.over_context: skip`, `selftune generate --over-context skip`), it
is skipped and counted. A model given more than its context window does not fail: it grows its KV
cache until the machine runs out of memory, or spends minutes on a prompt it cannot read.

    fit = check_prompts(spec, messages, ids, budgets, where="sample", budget_setting="generation.max_new_tokens")
    kept = [prompts[k] for k in fit.kept]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from selftune.generation.sampling import encode_prompt
from selftune.generation.types import Prompt
from selftune.models.limits import (
    ContextCheck,
    LimitError,
    MemoryEstimate,
    check_prompts_fit,
    generation_memory,
    model_shape,
)
from selftune.models.loading import default_device, load_tokenizer, resolve_dtype
from selftune.models.specs import resolve_model_path

OVER_CONTEXT = ("error", "skip")


def check_prompts(
    spec: str,
    prompts: Sequence[Prompt],
    ids: Sequence[str],
    budgets: Sequence[int],
    *,
    where: str,
    budget_setting: str,
    over_context: str = "error",
    option: str = "generation.over_context: skip",
    trust_remote_code: bool = False,
) -> ContextCheck:
    """Which of `prompts` fit `spec`'s context window with their answer budgets (`ContextCheck`).
    An answer budget that alone leaves no room for a prompt is an error whatever `over_context`
    says: it names `budget_setting`, the setting that gave it."""
    shape = model_shape(spec, trust_remote_code=trust_remote_code)
    if not prompts or shape is None or shape.context is None:
        return ContextCheck(list(range(len(prompts))), [])
    longest = max(budgets)
    if longest >= shape.context:
        raise LimitError(
            f"{where}: {budget_setting} allows answers of {longest} tokens, which leaves no room for a prompt "
            f"in the {shape.context}-token context window of {spec}; set it below {shape.context}"
        )
    tokenizer = _counting_tokenizer(spec, _stamp(spec), trust_remote_code)
    counts = [len(encode_prompt(tokenizer, prompt)) for prompt in prompts]
    return check_prompts_fit(
        shape, list(ids), counts, list(budgets), where=where, over_context=over_context, option=option
    )


def _stamp(spec: str) -> tuple:
    """What identifies a model folder's tokenizer files as they are now (a rerun stage rewrites its
    merged model in place), so that a cached tokenizer is never an old one."""
    folder = Path(resolve_model_path(spec))
    if not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*token*")))


@functools.lru_cache(maxsize=8)
def _counting_tokenizer(spec: str, stamp: tuple, trust_remote_code: bool):
    # Loaded once per model folder and process: a run checks its prompts at every stage that
    # generates and `evaluate` for each model and prompt set (0.1 s each, 2 s the first time).
    return load_tokenizer(spec, trust_remote_code=trust_remote_code)


def check_stage_prompts(
    policy: str, messages: list, ids: list[str], budgets: list[int], cfg, stage: str
) -> ContextCheck:
    """`check_prompts` with a run's settings, for a stage about to generate with `policy`: the
    budget setting named is the cap when a prompt's budget comes from it."""
    return check_prompts(
        policy,
        messages,
        ids,
        budgets,
        where=stage,
        budget_setting="generation.max_new_tokens_cap"
        if max(budgets, default=0) > cfg.generation.max_new_tokens
        else "generation.max_new_tokens",
        over_context=cfg.generation.over_context,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def generation_estimate(spec: str, cfg, fit: ContextCheck, n: int) -> MemoryEstimate | None:
    """The estimated peak of a process generating `n` answers per prompt for the prompts `fit`
    kept, with a run's settings (`selftune.models.limits.generation_memory`); None where the
    model's shape is unknown offline."""
    shape = model_shape(spec, trust_remote_code=cfg.model.trust_remote_code)
    if shape is None or not fit.kept:
        return None
    device = default_device()
    dtype_bytes = resolve_dtype(cfg.model.dtype, device).itemsize
    slots = max(cfg.generation.batch_size, n)
    return generation_memory(shape, slots=slots, capacity=fit.longest + 1, dtype_bytes=dtype_bytes, device=device)


__all__ = ["OVER_CONTEXT", "ContextCheck", "LimitError", "check_prompts", "check_stage_prompts", "generation_estimate"]
