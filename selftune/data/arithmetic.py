"""A second built-in task family: arithmetic word problems with a reference answer
(`prompts.source: builtin:arithmetic`, scored by `builtin:final_number`; preset `arithmetic`).

It shows the loop is not tied to instruction constraints: the same sample, SFT, pairs, DPO and
evaluate stages run on a task whose verifier compares the answer's final number with the record's
`answer` field.

Train and eval are disjoint three ways, so the held-out accuracy measures the skill, not a memory
of the train set: each split has its own problem templates (the same operations, worded and framed
differently), its own topics and names, and its own numbers (train operands are never multiples
of 4, eval operands always are; both from 2 to 40, a factor at most 12, so difficulty matches). Problems take
one or two steps (add, subtract, multiply, divide evenly, and their combinations); each template
records its operation in `operation`, so accuracy per operation can be read from the answers.

Usage:
    from selftune.data.arithmetic import build_arithmetic_prompts
    records = build_arithmetic_prompts(n_train=300, n_eval=200, seed=0)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from selftune.data.records import PromptRecord

SOURCE = "builtin:arithmetic"


@dataclass(frozen=True)
class Template:
    operation: str
    text: str
    operands: int  # how many numbers (a, b, c) the text takes

    def answer(self, a: int, b: int, c: int) -> int:
        return {
            "add": a + b,
            "subtract": a - b,
            "multiply": a * b,
            "divide": a,  # the text gives a * b and b
            "add-subtract": a + b - c,
            "multiply-add": a * b + c,
            "add-add": a + b + c,
            "multiply-subtract": a * b - c,
        }[self.operation]


# {n}: a name, {x}: the things counted; {a} {b} {c}: numbers, {ab}: a * b.
TEMPLATES = {
    "train": [
        Template("add", "{n} has {a} {x}. Later {n} gets {b} more {x}. How many {x} does {n} have now?", 2),
        Template("subtract", "{n} had {a} {x} and gave {b} of them to a friend. How many {x} does {n} have left?", 2),
        Template("multiply", "There are {a} boxes, and each box holds {b} {x}. How many {x} are there in all?", 2),
        Template("divide", "{n} shares {ab} {x} equally among {b} friends. How many {x} does each friend get?", 2),
        Template("add-subtract", "{n} has {a} {x}, finds {b} more, then loses {c}. How many {x} does {n} have?", 3),
        Template("multiply-add", "{n} buys {a} packs of {b} {x} and {c} loose {x}. How many {x} does {n} buy?", 3),
    ],
    "eval": [
        Template("add", "A shelf holds {a} {x}. Someone puts {b} more {x} on it. What is the total on the shelf?", 2),
        Template("subtract", "Out of {a} {x} in a drawer, {b} were taken out. How many {x} remain in the drawer?", 2),
        Template("multiply", "{a} children each bring {b} {x} to class. How many {x} do they bring together?", 2),
        Template("divide", "{ab} {x} are packed into bags of {b}. How many full bags are there?", 2),
        Template("add-add", "{n} starts with {a} {x}, gets {b} on Monday and {c} on Tuesday. How many {x} now?", 3),
        Template("multiply-subtract", "{n} buys {a} bags with {b} {x} each and gives away {c}. How many are left?", 3),
    ],
}
TOPICS = {
    "train": ["apples", "marbles", "stickers", "books", "coins", "cookies", "toy cars", "pencil cases"],
    "eval": ["shells", "stamps", "pencils", "cards", "beads", "buttons", "candles", "ribbons"],
}
NAMES = {
    "train": ["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lina", "Ben"],
    "eval": ["Ruth", "Ivan", "Kemi", "Paul", "Sara", "Tomas", "Yuki", "Dev"],
}
# How the answer is asked for: each split its own wordings.
ASKS = {
    "train": [
        "Work it out step by step, then give the final answer as a number on the last line.",
        "Show your reasoning briefly and end with the final number.",
        "Solve it and finish with the answer as a single number.",
    ],
    "eval": [
        "Explain the steps, and put the final number at the very end.",
        "Answer with a short solution that ends in the resulting number.",
    ],
}


def _pool(split: str, top: int) -> list[int]:
    """Operands from 2 to `top`: in train never a multiple of 4, in eval always one."""
    return [k for k in range(2, top + 1) if (k % 4 == 0) == (split == "eval")]


def _problems(rng: random.Random, split: str, total: int) -> list[tuple[str, int, str]]:
    out, seen = [], set()
    templates = TEMPLATES[split]
    while len(out) < total:
        template = templates[len(out) % len(templates)]
        # A factor (b of the multiplying templates) stays at most 12: the skill is the steps, not long multiplication.
        factor = template.operation.startswith(("multiply", "divide"))
        a, c = rng.choice(_pool(split, 40)), rng.choice(_pool(split, 40))
        b = rng.choice(_pool(split, 12 if factor else 40))
        if template.operation == "subtract":
            if a == b:
                continue
            a, b = max(a, b), min(a, b)  # a positive answer
        if template.operation in ("add-subtract", "multiply-subtract") and template.answer(a, b, c) <= 0:
            continue
        name, topic = rng.choice(NAMES[split]), rng.choice(TOPICS[split])
        text = template.text.format(n=name, x=topic, a=a, b=b, c=c, ab=a * b)
        if text in seen:
            continue
        seen.add(text)
        out.append((f"{text} {rng.choice(ASKS[split])}", template.answer(a, b, c), template.operation))
    return out


def build_arithmetic_prompts(
    n_train: int = 300, n_eval: int = 200, seed: int = 0, round_number: int = 1
) -> list[PromptRecord]:
    """Deterministic train and eval word problems, each with its `answer` (a whole number) and
    `operation`. `round_number` r > 1 gives that round's fresh train problems only (the train
    stream continues where round r-1 stopped, so no round repeats an earlier one's problem)."""
    train = _problems(random.Random(f"arithmetic-{seed}"), "train", n_train * round_number)[
        n_train * (round_number - 1) :
    ]
    prefix = "arith" if round_number == 1 else f"arith-r{round_number}"
    records = _records(prefix, "train", train)
    if round_number > 1:
        return records
    return records + _records("arith-eval", "eval", _problems(random.Random(f"arithmetic-eval-{seed}"), "eval", n_eval))


def _records(prefix: str, split: str, problems: list[tuple[str, int, str]]) -> list[PromptRecord]:
    return [
        PromptRecord(
            id=f"{prefix}-{i:04d}",
            messages=[{"role": "user", "content": text}],
            split=split,
            answer=str(answer),
            operation=operation,
        )
        for i, (text, answer, operation) in enumerate(problems)
    ]
