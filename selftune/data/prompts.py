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

import random
from pathlib import Path

from selftune.data.constraints.registry import compatible, describe
from selftune.data.constraints.types import CONSTRAINTS
from selftune.data.records import PromptRecord, RowProblem, convert_rows, with_id

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


# How many constraints a prompt gets: mostly one, so a small model still passes often enough for
# rejection sampling to keep data; harder combinations are rarer.
CONSTRAINT_COUNT_WEIGHTS = {1: 0.6, 2: 0.3, 3: 0.1}


def _draw_constraints(rng: random.Random, split: str, count: int, type_weights: dict[str, float]) -> list[dict]:
    """`count` compatible constraints, each with its parameters and one of its split's wordings."""
    names: list[str] = []
    for _ in range(count):
        options = [n for n in CONSTRAINTS if compatible(names, n) and type_weights.get(n, 1.0) > 0]
        if not options:
            break
        names.append(rng.choices(options, [type_weights.get(n, 1.0) for n in options])[0])
    return [
        {
            "type": n,
            "kwargs": CONSTRAINTS[n].sample_kwargs(rng, split),
            "wording": rng.choice(CONSTRAINTS[n].wording_ids(split)),
        }
        for n in names
    ]


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


def build_prompts(
    n_train: int = 300,
    n_eval: int = 200,
    max_constraints: int = 3,
    seed: int = 0,
    type_weights: dict[str, float] | None = None,
) -> list[PromptRecord]:
    """Deterministic train and eval prompts (see the module docstring for how eval is held out).

    `type_weights` (constraint type -> relative weight, 1 when absent, 0 = never) shapes the
    *train* mix only: the eval split draws every type evenly, so a score on it is not tilted
    towards the types training favoured.

    Each split draws from its own random stream, so the eval prompts depend only on `seed` and
    `n_eval`: runs that differ in their train mix or size are scored on the same eval set."""
    check_type_weights(type_weights or {})
    streams = {"train": random.Random(seed), "eval": random.Random(f"eval-{seed}")}
    counts = [c for c in CONSTRAINT_COUNT_WEIGHTS if c <= max_constraints]
    weights = [CONSTRAINT_COUNT_WEIGHTS[c] for c in counts]
    records = []
    for split, total in (("train", n_train), ("eval", n_eval)):
        rng = streams[split]
        tasks = [form.format(topic) for form in FORMS[split] for topic in TOPICS[split]]
        rng.shuffle(tasks)
        for i in range(total):
            task = tasks[i % len(tasks)]
            constraints = _draw_constraints(
                rng, split, rng.choices(counts, weights)[0], (type_weights or {}) if split == "train" else {}
            )
            text = " ".join([task] + [describe(c["type"], c["kwargs"], c["wording"]) for c in constraints])
            records.append(
                PromptRecord(
                    id=f"{split}-{i:04d}",
                    messages=[{"role": "user", "content": text}],
                    constraints=constraints,
                    split=split,
                )
            )
    return records


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
