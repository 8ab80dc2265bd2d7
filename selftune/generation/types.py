"""The generation interface: `Generator`, `SamplingParams`, `Completion` and the callbacks a
generator takes (progress, early rejection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

# Raw text, or a chat as role/content dicts (`selftune.data.records.Message.model_dump()`), which is what
# chat templates take.
Prompt = str | list[dict[str, str]]


# stop: the model closed its turn; length: the token cap; rejected: early rejection stopped an
# answer whose prefix already failed a check that cannot recover (`Completion.rejected_by` names it).
FinishReason = Literal["stop", "length", "rejected"]


# Called after each batch with (prompts finished so far, new tokens generated in this batch).
ProgressCallback = Callable[[int, int], None]


# Called by stages whose work is not generation or training steps (evaluation per model and prompt
# set, DPO's reference pass, export) with (what is being done, units done so far, units in all).
PhaseCallback = Callable[[str, int, "int | None"], None]


# Early rejection: called with (prompt index, sample index, answer text so far), returns the name of
# a check the answer can no longer pass (the answer stops there, finish_reason "rejected"), or None.
StopWhen = Callable[[int, int, str], "str | None"]


def phase_progress(phase: PhaseCallback | None, label: str, total: int) -> ProgressCallback | None:
    """A generator's progress callback reporting to `phase` under `label` (prompts done of `total`)."""
    if phase is None:
        return None
    phase(label, 0, total)
    return lambda done, _tokens: phase(label, done, total)


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # answers per prompt
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass; 1 keeps the whole distribution
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    prompt_index: int
    sample_index: int
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int  # includes the stop token when finish_reason == "stop"
    seed: int | None  # the row's own sampling seed; None when greedy
    rejected_by: str | None = None  # the failed check when finish_reason == "rejected"
    # The generated token ids (the stop token included when finish_reason == "stop"): what online RL
    # trains on, exactly as sampled, rather than a re-tokenization of `text`.
    token_ids: tuple[int, ...] = ()


class Generator(Protocol):
    """Anything that answers prompts. Tests use a mock that returns queued answers."""

    name: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        stop_when: StopWhen | None = None,
    ) -> list[list[Completion]]:
        """One list of `params.n` completions per prompt, in the order of `prompts`."""
        ...


class Remapped:
    """A `stop_when` for a subset of the prompts: the subset's prompt indices mapped back to the
    caller's (a generation replica's shard, one answer budget's prompts). A class, not a closure:
    replicas receive it pickled."""

    def __init__(self, stop_when: StopWhen, index: list[int]):
        self.stop_when, self.index = stop_when, index

    def __call__(self, prompt_index: int, sample_index: int, text: str) -> str | None:
        return self.stop_when(self.index[prompt_index], sample_index, text)
