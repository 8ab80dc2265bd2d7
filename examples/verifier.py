"""An example verifier for `scorer.kind: function` (README, "Your own verifier").

selftune calls it the way TRL's GRPOTrainer calls a reward function, by keyword:
`prompts` (one message list per answer), `completions` (one `[{"role": "assistant", "content": ...}]`
per answer) and one list per extra field of the prompt records (here `answer`). It returns one
score in [0, 1] per completion, or None where it has no verdict.

    selftune run --preset tiny --set prompts.source=builtin:arithmetic \
        --set sample.scorer.kind=function --set sample.scorer.function=examples/verifier.py:last_number_matches
"""

import re


def last_number_matches(prompts, completions, answer, **kwargs):
    """1.0 when the answer's last number equals the record's reference `answer`, else 0.0."""
    scores = []
    for completion, expected in zip(completions, answer):
        if expected is None:  # a prompt without a reference: no verdict
            scores.append(None)
            continue
        numbers = re.findall(r"-?\d+(?:\.\d+)?", completion[0]["content"].replace(",", ""))
        scores.append(1.0 if numbers and float(numbers[-1]) == float(expected) else 0.0)
    return scores
