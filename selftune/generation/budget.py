"""Answers whose token budget differs by prompt (a long essay beside a haiku): one `generate` call
per budget, each with its prompts, and the answers put back in the callers' order. A long
budget given to every prompt would let a short answer that fails to stop run on to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from selftune.generation.types import (
    Completion,
    Generator,
    ProgressCallback,
    Prompt,
    Remapped,
    SamplingParams,
    StopWhen,
)


def generate_with_budgets(
    generator: Generator,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    budgets: Sequence[int],
    *,
    progress: ProgressCallback | None = None,
    stop_when: StopWhen | None = None,
) -> list[list[Completion]]:
    """`generator.generate` with `budgets[k]` new tokens at most for prompt k (`params` otherwise).
    Answers do not depend on the grouping: each answer's seed comes from its prompt and sample
    index, and early rejection hears the caller's prompt indices."""
    if len(budgets) != len(prompts):
        raise ValueError(f"{len(budgets)} answer budgets for {len(prompts)} prompts")
    out: list[list[Completion] | None] = [None] * len(prompts)
    finished = 0
    for budget in sorted(set(budgets)):
        index = [k for k, b in enumerate(budgets) if b == budget]
        done_before = finished

        def report(done: int, tokens: int, done_before: int = done_before) -> None:
            progress(done_before + done, tokens)

        answers = generator.generate(
            [prompts[k] for k in index],
            dataclasses.replace(params, max_new_tokens=budget),
            progress=report if progress else None,
            stop_when=Remapped(stop_when, index) if stop_when else None,
        )
        for k, row in zip(index, answers):
            out[k] = [dataclasses.replace(c, prompt_index=k) for c in row]
        finished += len(index)
    return out  # type: ignore[return-value]
