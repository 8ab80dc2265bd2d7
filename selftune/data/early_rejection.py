"""Early rejection while sampling: the `stop_when` hook that cuts an answer once its prefix fails a
constraint for good (`selftune.data.constraints.early`), keeping enough whole answers for repairs.
"""

from __future__ import annotations

from selftune.data.constraints.early import EARLY_FAIL
from selftune.data.constraints.registry import fails_early
from selftune.data.records import PromptRecord
from selftune.data.repair import repairable


class EarlyRejection:
    """`stop_when` for generation: a constraint (as `type#index`, the scorer's check name) that an
    answer's prefix already fails for good, one no repair fixes before the others, or None
    (`constraints.fails_early`).

    Repairs need whole answers, so at least `full_samples` of each prompt's `answers` answers run
    to their end: an answer is cut only while enough of its siblings are still uncut. Which ones
    stay whole is decided as answers fail, not by sample index, so a doomed first answer is cut
    when a later one can still serve a repair. An answer failing a check that no repair can fix
    (`repair.repairable`: a letter or keyword counted too often) is always cut, since it could
    never become repair material. Both backends ask about each step's answers in (prompt, sample)
    order, so the outcome does not depend on batching.

    Stateful (it counts each prompt's cut answers): one instance per `generate` call. A class
    rather than a closure: generation replicas receive it pickled, each with whole prompts
    (`selftune.generation.replicas`)."""

    def __init__(self, prompts: list[PromptRecord], full_samples: int = 0, answers: int | None = None):

        if full_samples and answers is None:
            raise ValueError("EarlyRejection needs `answers` (answers per prompt) when full_samples > 0")
        self.full_samples = full_samples
        self.answers = answers or 0
        self.rules = [
            [
                (f"{c.type}#{k}", c.type, c.kwargs, repairable(c.type))
                for k, c in enumerate(p.constraints)
                if c.type in EARLY_FAIL
            ]
            for p in prompts
        ]
        self.cut: dict[int, int] = {}  # prompt index -> its answers cut so far

    def __call__(self, prompt_index: int, sample_index: int, text: str) -> str | None:

        rules = self.rules[prompt_index]
        cut = self.cut.get(prompt_index, 0)
        if self.full_samples and self.answers - cut - 1 < self.full_samples:
            # Cutting this answer would leave fewer than full_samples whole: only a check no
            # repair fixes may cut it, so only those are looked at.
            rules = [rule for rule in rules if not rule[3]]
        failed = [(name, fixable) for name, kind, kwargs, fixable in rules if fails_early(kind, text, kwargs)]
        if not failed:
            return None
        self.cut[prompt_index] = cut + 1
        return next((name for name, fixable in failed if not fixable), failed[0][0])
