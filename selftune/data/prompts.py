"""The built-in prompt set (tasks x verifiable constraints) and import of user prompts.

Built-in prompts pair a writing task with 1 to `max_constraints` compatible constraints. The set
is a pure function of its seed. The `eval` split is held out three times over:

- its tasks use topics and task forms that never occur in `train` (`TOPICS` and `FORMS` are split);
- its constraint parameters come from the `eval` value pools of each type (other word counts,
  keywords, phrases, letters...), so a model cannot pass eval by memorising train values;
- its instruction sentences use each type's `eval` wordings, which never occur in `train`, so a
  gain on eval shows the model follows a request however it is worded, not one memorised sentence.

Usage:
    from selftune.data.prompts import build_prompts, import_prompts
    records = build_prompts(n_train=300, n_eval=100, seed=0)
    records = import_prompts("my_prompts.csv")          # JSONL, JSON, CSV, Parquet, a datasets folder
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from selftune.data.arithmetic import SOURCE as ARITHMETIC_SOURCE
from selftune.data.constraints.registry import CONSTRAINTS, compatible, describe, fails_early, validated_params
from selftune.data.records import PromptRecord, RowProblem, convert_rows, read_records, with_id
from selftune.errors import RecordError

# `prompts.source` values built in code rather than read from a file (fresh train prompts each round).
BUILTIN_SOURCES = ("builtin", ARITHMETIC_SOURCE)

FORMS = {
    "train": [
        "Write a short blog post about {}.",
        "Explain {} to a ten-year-old.",
        "Write a brief product description for something related to {}.",
        "Describe a day spent thinking about {}.",
        "Give advice to someone who wants to learn about {}.",
        "Write a short story that involves {}.",
        "Write an email to a friend about {}.",
        "List some interesting facts about {}.",
        "Write a short poem about {}.",
        "Write a note for a classroom notice board about {}.",
        "Describe {} in a few sentences.",
        "Write a social media post about {}.",
        "Write a short review of a book about {}.",
        "Give three tips related to {}.",
        "Write a brief news report about {}.",
        "Write a riddle whose answer is {}.",
    ],
    "eval": [
        "Write a short speech about {}.",
        "Write a diary entry about {}.",
        "Summarize why people care about {}.",
        "Write a limerick about {}.",
        "Write a text message inviting a friend to learn about {}.",
        "Write a short travel guide entry about {}.",
        "Explain the history of {} briefly.",
        "Write a short dialogue between two people about {}.",
    ],
}


TOPICS = {
    "train": [
        "the ocean",
        "coffee",
        "mountains",
        "city parks",
        "trains",
        "rainy days",
        "gardening",
        "the moon",
        "bicycles",
        "libraries",
        "chess",
        "bread baking",
        "owls",
        "volcanoes",
        "music lessons",
        "recycling",
        "deserts",
        "honey bees",
        "old maps",
        "camping",
        "winter mornings",
        "street food",
        "lighthouses",
        "paper airplanes",
        "museums",
        "rivers",
        "board games",
        "clocks",
        "forests",
        "birthdays",
        "the internet",
        "snow",
        "kites",
        "farmers markets",
        "penguins",
        "space travel",
        "friendship",
        "tea",
        "photography",
        "sunflowers",
        "elephants",
        "bakeries",
        "sailing",
        "mushrooms",
        "islands",
        "trees in autumn",
        "the post office",
        "swimming",
        "pizza",
        "hiking boots",
        "fossils",
        "umbrellas",
        "the circus",
        "pencils",
        "rainforests",
        "bees and flowers",
        "lanterns",
        "astronauts",
        "picnics",
        "saving money",
        "learning a language",
        "dinosaurs",
        "bridges of wood",
        "a village fair",
        "foxes",
        "knitting",
        "the first day of school",
        "carnivals",
        "wind",
        "night trains",
        "ice cream",
        "frogs",
        "castles",
        "yoga",
        "soup",
        "football",
        "maps of stars",
        "spiders",
        "theatre",
    ],
    "eval": [
        "bridges",
        "thunderstorms",
        "dolphins",
        "public transport",
        "origami",
        "glaciers",
        "marathons",
        "typewriters",
        "coral reefs",
        "autumn leaves",
        "robots",
        "violins",
        "hot air balloons",
        "caves",
        "postcards",
        "windmills",
        "jellyfish",
        "sandcastles",
        "fireflies",
        "submarines",
        "vineyards",
        "puzzles",
        "comets",
        "harbors",
        "kayaking",
        "waterfalls",
        "tigers",
        "soap bubbles",
        "telescopes",
        "pottery",
        "the arctic",
        "canals",
        "skyscrapers",
        "pinecones",
        "rainbows",
        "lemons",
        "mailboxes",
        "parrots",
        "skateboards",
        "rock climbing",
        "volunteering",
        "the desert at night",
        "quilts",
        "chocolate",
        "bus stops",
        "wolves",
        "snorkeling",
        "chess clocks",
        "mountain huts",
        "candles",
    ],
}


# Long-form tasks: each asks for at least `LONG_WORDS` words (a word_count constraint), so the
# model learns to write the length a request asks for, as many real requests (and IFEval's) do.
LONG_FORMS = {
    "train": [
        "Write an essay about {}.",
        "Write a letter to a friend about {}.",
        "Write a story about {}.",
        "Write a report on {}.",
        "Write a detailed guide to {}.",
        "Write an article about {}.",
    ],
    "eval": ["Write a magazine feature about {}.", "Write a long open letter to your town about {}."],
}
LONG_WORDS = {"train": [100, 150, 200, 300, 400, 500, 600], "eval": [120, 250, 350]}

# How many constraints a train prompt gets (up to `prompts.max_constraints`): several constraints
# per prompt teach combining them (the IFBench paper found up to 5-6 per training prompt better than
# up to 3, on IFEval too); one-constraint prompts keep the yield up. The eval split has IFEval's
# shape: one to three constraints, mostly one, a tenth long-form (each long form carries a word
# count, so a larger share would make the length check a third of the eval, as it once did).
CONSTRAINT_COUNT_WEIGHTS = {1: 0.3, 2: 0.3, 3: 0.2, 4: 0.1, 5: 0.1}
EVAL_COUNT_WEIGHTS = {1: 0.55, 2: 0.35, 3: 0.1}
EVAL_LONG_FORM_SHARE = 0.1


def _draw_constraints(
    rng: random.Random,
    split: str,
    count: int,
    type_weights: dict[str, float],
    types: list[str],
    given: list[dict],
    max_words: int | None = None,
) -> list[dict]:
    """`count` compatible constraints (`given` first), each with its parameters and one of its
    split's wordings; a type that repeats the request comes last, its parameter left to fill.
    `max_words`: no constraint that states a length (`asks_length`) asks for more words than that
    (a few redraws of its parameters, then the type is passed over for this prompt)."""
    names = [c["type"] for c in given]
    drawn = {c["type"]: c for c in given}
    passed_over: set[str] = set()
    while len(names) < count:
        options = [n for n in types if compatible(names, n) and type_weights.get(n, 1.0) > 0 and n not in passed_over]
        if not options:
            break
        name = rng.choices(options, [type_weights.get(n, 1.0) for n in options])[0]
        kind = CONSTRAINTS[name]
        for _ in range(8):
            kwargs = kind.sample_kwargs(rng, split)
            if max_words is None or not kind.asks_length or words_asked(name, kwargs) <= max_words:
                break
        else:
            passed_over.add(name)
            continue
        names.append(name)
        drawn[name] = {"type": name, "kwargs": kwargs, "wording": rng.choice(kind.wording_ids(split))}
    names.sort(key=lambda n: CONSTRAINTS[n].repeats_request)  # stable: the repeat goes last
    return [drawn[n] for n in names]


def words_asked(name: str, kwargs: dict) -> int:
    """How many words a constraint asks the answer to run to at least (0 when it asks no length)."""
    kind = CONSTRAINTS.get(name)
    if kind is None or kind.words_asked is None:
        return 0
    return kind.words_asked(validated_params(name, kwargs))


def _task_parameters(task: str, constraints: list[dict]) -> None:
    """Redraw in place the parameters of the constraints whose type takes them from the task's own
    words (`task_draw`: forbid a word the task invites). The generator is seeded by the prompt
    itself, not drawn from the set's: the set's draws, and so every other prompt, stay as they are."""
    for constraint in constraints:
        kind = CONSTRAINTS[constraint["type"]]
        if kind.task_draw is None:
            continue
        others = json.dumps([c["kwargs"] for c in constraints if c is not constraint]).lower()
        taken = frozenset(re.findall(r"[a-z]+", others))
        seed = json.dumps([task, constraint], sort_keys=True)
        drawn = kind.task_draw(random.Random(seed), task, constraint["kwargs"], taken)
        if drawn is not None:
            constraint["kwargs"] = drawn


def _prompt_text(task: str, constraints: list[dict]) -> tuple[str, list[dict]]:
    """The task and each constraint's instruction, and the constraints asked; a repeated request is
    everything before it. A repeat whose request already breaks another of the constraints (it
    quotes the forbidden words, it has more words than allowed) is left out: no answer that
    repeats the request could pass."""
    parts = [task]
    for constraint in constraints:
        if CONSTRAINTS[constraint["type"]].repeats_request:
            request = " ".join(parts)
            others = [c for c in constraints if c is not constraint]
            if any(fails_early(c["type"], request, c["kwargs"]) for c in others):
                return request, others  # the repeat is always the last constraint
            constraint["kwargs"] = {"prompt_to_repeat": request}
        parts.append(describe(constraint["type"], constraint["kwargs"], constraint["wording"]))
    return " ".join(parts), constraints


def check_type_weights(weights: dict[str, float]) -> dict[str, float]:
    """`weights` unchanged, or ValueError naming unknown constraint types or negative weights
    (also run by the config's `prompts.type_weights` validator)."""
    unknown = sorted(set(weights) - set(CONSTRAINTS))
    if unknown:
        raise ValueError(f"unknown constraint type(s) {unknown}; known: {sorted(CONSTRAINTS)}")
    negative = sorted(n for n, w in weights.items() if w < 0)
    if negative:
        raise ValueError(f"weights must be >= 0, not for {negative}")
    return weights


def _prompts(
    rng: random.Random,
    split: str,
    total: int,
    counts: dict[int, float],
    long_share: float,
    type_weights: dict[str, float],
    types: list[str],
    max_words: int | None = None,
) -> list[tuple[str, list[dict]]]:
    """`total` (prompt text, constraints) of `split`, tasks in a seeded order cycled through;
    `max_words`: none asks for more words than that (no long forms when none of theirs fits)."""
    long_words = [n for n in LONG_WORDS[split] if max_words is None or n <= max_words]
    long_share = long_share if long_words else 0.0
    tasks = {
        False: [form.format(topic) for form in FORMS[split] for topic in TOPICS[split]],
        True: [form.format(topic) for form in LONG_FORMS[split] for topic in TOPICS[split]],
    }
    for pool in tasks.values():
        rng.shuffle(pool)
    taken = {False: 0, True: 0}
    out = []
    for _ in range(total):
        long = rng.random() < long_share
        task = tasks[long][taken[long] % len(tasks[long])]
        taken[long] += 1
        given = []
        if long:
            kwargs = {"relation": "at least", "n": rng.choice(long_words)}
            given = [
                {
                    "type": "word_count",
                    "kwargs": kwargs,
                    "wording": rng.choice(CONSTRAINTS["word_count"].wording_ids(split)),
                }
            ]
        count = max(len(given), rng.choices(list(counts), list(counts.values()))[0])
        constraints = _draw_constraints(rng, split, count, type_weights, types, given, max_words)
        _task_parameters(task, constraints)
        out.append(_prompt_text(task, constraints))
    return out


def build_prompts(
    n_train: int = 300,
    n_eval: int = 200,
    max_constraints: int = 5,
    seed: int = 0,
    type_weights: dict[str, float] | None = None,
    long_form_share: float = 0.25,
    round_number: int = 1,
    answer_cap: int | None = None,
    eval_answer_cap: int | None = None,
) -> list[PromptRecord]:
    """Deterministic train and eval prompts (see the module docstring for how eval is held out).

    Train prompts draw from every constraint type, 1 to `max_constraints` per prompt, a
    `long_form_share` of them long-form; `type_weights` (type -> relative weight, 1 when absent,
    0 = never) shapes that mix. With `answer_cap` (the most tokens a train answer may take), no train
    prompt asks for more words than fit in it, since an answer cut short of its length teaches
    nothing (long forms whose lengths all exceed it are left out); `eval_answer_cap` does the same
    for the eval split, whose answers are measured at that cap (a prompt no answer within it can
    pass measures nothing). The eval split has IFEval's shape whatever the train settings:
    IFEval's types only, 1 to 3 per prompt, a tenth long-form.

    Each split draws from its own random stream, so the eval prompts depend only on `seed` and
    `n_eval`. `round_number` r > 1 gives that round's fresh train prompts only: the train stream
    continues where round r-1 stopped (its tasks come next in the same seeded order), so no round
    repeats an earlier round's prompt."""
    check_type_weights(type_weights or {})
    counts = {c: w for c, w in CONSTRAINT_COUNT_WEIGHTS.items() if c <= max_constraints}
    train = _prompts(
        random.Random(seed),
        "train",
        n_train * round_number,
        counts,
        long_form_share,
        type_weights or {},
        list(CONSTRAINTS),
        None if answer_cap is None else words_fitting(answer_cap),
    )[n_train * (round_number - 1) :]
    prefix = "train" if round_number == 1 else f"train-r{round_number}"
    records = [
        PromptRecord(id=f"{prefix}-{i:04d}", messages=[{"role": "user", "content": text}], constraints=c, split="train")
        for i, (text, c) in enumerate(train)
    ]
    if round_number > 1:
        return records
    ifeval_types = [name for name, kind in CONSTRAINTS.items() if kind.ifeval]
    held_out = _prompts(
        random.Random(f"eval-{seed}"),
        "eval",
        n_eval,
        EVAL_COUNT_WEIGHTS,
        EVAL_LONG_FORM_SHARE,
        {},
        ifeval_types,
        None if eval_answer_cap is None else words_fitting(eval_answer_cap),
    )
    records += [
        PromptRecord(id=f"eval-{i:04d}", messages=[{"role": "user", "content": text}], constraints=c, split="eval")
        for i, (text, c) in enumerate(held_out)
    ]
    return records


# About 1.4 tokens per English word, plus room to finish the answer.
TOKENS_PER_WORD = 1.4
FINISH_TOKENS = 64


def answer_tokens(prompt: PromptRecord, base: int, cap: int) -> int:
    """The answer budget a prompt needs: `base` tokens, or more where a constraint asks for a length
    (`TOKENS_PER_WORD` per word, plus `FINISH_TOKENS`), at most `cap`."""
    asked = max((words_asked(c.type, c.kwargs) for c in prompt.constraints), default=0)
    return min(cap, max(base, int(asked * TOKENS_PER_WORD) + FINISH_TOKENS))


def words_fitting(cap: int) -> int:
    """The most words a prompt may ask for so that its answer budget stays within `cap` tokens."""
    return max(0, int((cap - FINISH_TOKENS) / TOKENS_PER_WORD))


def scorable_train_prompts(path: Path, scorer_kind: str) -> list[PromptRecord]:
    """The train split of the prompts file at `path`, every prompt checked for what the scorer
    needs (the constraints scorer: at least one constraint); a RecordError names each one that
    fails, or says there is no train prompt at all. What the sample and grpo stages answer."""
    prompts = [p for p in read_records(Path(path), "prompts") if p.split == "train"]
    if not prompts:
        raise RecordError([f"{path}: no prompts with split 'train'"])
    if scorer_kind == "constraints":
        missing = [
            f"{path}: prompt {p.id}: constraints: empty (the constraints scorer needs at least one)"
            for p in prompts
            if not p.constraints
        ]
        if missing:
            raise RecordError(missing)
    return prompts


def answer_budgets(prompts: list[PromptRecord], base: int, cap: int) -> list[int]:
    """`answer_tokens` of each prompt, in order."""
    return [answer_tokens(prompt, base, cap) for prompt in prompts]


def import_prompts(path: Path | str, split: str = "train") -> list[PromptRecord]:
    """User prompts from JSONL, JSON, CSV, Parquet or a `datasets` folder. A row holds
    `messages` (selftune's own format), `prompt` or `instruction`, and optionally `id`,
    `constraints` and `split`. Every row is validated like a prompts file: a bad row, a duplicate
    id or an unreadable file fails the import with `file:line: field: problem`."""
    return convert_rows(Path(path), "prompts", lambda row, number: _as_prompt(row, number, split))  # type: ignore[return-value]


def _as_prompt(row, number: int, split: str):
    if not isinstance(row, dict):
        return row  # validate_rows names it
    data = with_id(row, f"{split}-{number:05d}")
    text = row.get("prompt") if row.get("prompt") is not None else row.get("instruction")
    if "messages" not in row and text is not None:
        data.pop("prompt", None), data.pop("instruction", None)
        data["messages"] = [{"role": "user", "content": text}] if isinstance(text, str) else text
    elif "messages" not in row:
        return RowProblem("prompt", "missing (need 'messages', 'prompt' or 'instruction')")
    data["split"] = row.get("split") or split
    data["constraints"] = row.get("constraints") or []
    return data
