"""No leakage from what is measured into what is trained on.

The eval split's prompt texts and instruction wordings never occur in train (also
tests/test_data_stages.py), and no sentence of a benchmark prompt known to the project (IFEval's 541
prompts, IFBench's 300) occurs in any built-in prompt or instruction wording. The benchmark texts
themselves are not in the repository: `tests/data/benchmark_sentences.txt` holds a digest of each
of their sentences, written from the benchmark files with

    python tests/test_leakage.py input_data.jsonl IFBench_test.jsonl
 When the files are at hand, `SELFTUNE_BENCHMARK_FILES`
(os.pathsep-separated paths) makes the test read them directly as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from selftune.data.constraints.registry import CONSTRAINTS
from selftune.data.prompts import FORMS, TOPICS, build_prompts

FINGERPRINTS = Path(__file__).parent / "data" / "benchmark_sentences.txt"


def sentences(text: str) -> list[str]:
    """Normalized sentences of 4 or more words: lowercased, punctuation dropped, spaces collapsed."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    normalized = (" ".join(re.sub(r"[^a-z0-9 ]+", " ", p.lower()).split()) for p in parts)
    return [s for s in normalized if len(s.split()) >= 4]


def digest(sentence: str) -> str:
    return hashlib.sha256(sentence.encode()).hexdigest()[:16]


def builtin_texts() -> list[str]:
    """Every text the built-in train data can be made of: prompts, task forms, wording templates."""
    texts = [r.messages[0].content for r in build_prompts(n_train=2000, n_eval=10, seed=0)]
    texts += [form.format(topic) for split in FORMS for form in FORMS[split] for topic in TOPICS[split][:3]]
    texts += [w for kind in CONSTRAINTS.values() for split in kind.wordings for w in kind.wordings[split]]
    return texts


def file_sentences(path: str | Path) -> set[str]:
    """Digests of the sentences of every prompt in a benchmark JSONL file."""
    return {
        digest(s)
        for line in Path(path).read_text().splitlines()
        if line.strip()
        for s in sentences(json.loads(line)["prompt"])
    }


def benchmark_sentences() -> set[str]:
    known = {
        line.strip() for line in FINGERPRINTS.read_text().splitlines() if line.strip() and not line.startswith("#")
    }
    for path in filter(None, os.environ.get("SELFTUNE_BENCHMARK_FILES", "").split(os.pathsep)):
        known |= file_sentences(path)
    return known


def test_fingerprints_cover_both_benchmarks():
    assert len(benchmark_sentences()) > 1500  # IFEval and IFBench together: 2,215 distinct sentences of 4+ words


def test_no_benchmark_sentence_occurs_in_any_builtin_prompt_or_wording():
    known = benchmark_sentences()
    leaked = {s for text in builtin_texts() for s in sentences(text) if digest(s) in known}
    assert not leaked, f"benchmark sentences in built-in prompts: {sorted(leaked)[:5]}"


def test_the_check_catches_a_benchmark_sentence():
    # A sentence of IFEval prompt 1001, as a copied wording would bring it in.
    copied = "Answer briefly. You are NOT allowed to use any commas in your response!"
    assert any(digest(s) in benchmark_sentences() for s in sentences(copied))


def test_no_eval_prompt_text_occurs_in_train():
    records = build_prompts(n_train=640, n_eval=400, seed=0)  # the transfer preset's train, the demo's eval
    train = "\n".join(r.messages[0].content for r in records if r.split == "train")
    for record in records:
        if record.split == "eval":
            for sentence in re.split(r"(?<=[.!?])\s+", record.messages[0].content):
                assert sentence not in train, (record.id, sentence)
    for kind in CONSTRAINTS.values():
        assert not set(kind.wordings["train"]) & set(kind.wordings["eval"]), kind.name


# The training-only types closest to an IFBench test instruction, reviewed: each asks for something
# else, so IFBench stays a test of what training did not show.
IFBENCH_NEAREST = {
    "numbered_list": (
        "format:list",
        "IFBench: a list whose items are separated by a given symbol; ours: items numbered 1..n",
    ),
    "colon_lines": (
        "format:output_template",
        "IFBench: one fixed three-label template; ours: any n 'Label: text' lines",
    ),
    "question_count": (
        "ratio:sentence_type",
        "IFBench: a 2:1 ratio of statements to questions; ours: at least n questions",
    ),
    "semicolons": ("count:punctuation", "IFBench: every punctuation mark at least once; ours: n semicolons"),
    "word_length_limit": ("words:prime_lengths", "IFBench: every word of a prime length; ours: no word over n letters"),
    "max_sentence_words": (
        "sentence:increment",
        "IFBench: each sentence n words longer than the last; ours: a ceiling",
    ),
    "bold_words": ("format:thesis", "IFBench: an italic HTML thesis opening each section; ours: n bold markdown spans"),
}


def ifbench_ids() -> set[str]:
    """IFBench's test instructions: its reference registry's, and its test file's when given."""
    ids = set(pytest.importorskip("if_verifiable.ifbench.instructions_registry").INSTRUCTION_DICT)
    for path in filter(None, os.environ.get("SELFTUNE_BENCHMARK_FILES", "").split(os.pathsep)):
        if "ifbench" in Path(path).name.lower():
            rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
            ids |= {instruction for row in rows for instruction in row["instruction_id_list"]}
    return ids


def test_no_builtin_type_implements_an_ifbench_test_instruction():
    ifbench = ifbench_ids()
    assert len(ifbench) >= 58
    ifeval = set(pytest.importorskip("if_verifiable.ifeval.instructions_registry").INSTRUCTION_DICT)
    names = {i.split(":", 1)[1] for i in ifbench}
    for name, kind in CONSTRAINTS.items():
        # IFEval's types name the IFEval instruction they implement; none is an IFBench one.
        assert kind.ifeval is None or (kind.ifeval in ifeval and kind.ifeval not in ifbench), name
        if kind.ifeval is None:
            assert name not in names, f"training-only type {name} is named like an IFBench instruction"
    for name, (instruction, why) in IFBENCH_NEAREST.items():
        assert name in CONSTRAINTS and CONSTRAINTS[name].ifeval is None and instruction in ifbench and why


@pytest.mark.skipif(not os.environ.get("SELFTUNE_BENCHMARK_FILES"), reason="benchmark files not given")
def test_fingerprint_file_is_current():
    # With the files at hand, every sentence of theirs is in the stored digests.
    stored = {
        line.strip() for line in FINGERPRINTS.read_text().splitlines() if line.strip() and not line.startswith("#")
    }
    assert benchmark_sentences() <= stored


def write_fingerprints(paths: list[str]) -> int:
    known = set().union(*(file_sentences(path) for path in paths))
    FINGERPRINTS.parent.mkdir(exist_ok=True)
    FINGERPRINTS.write_text(
        "# sha256 (first 16 hex digits) of each normalized sentence of 4+ words of IFEval's input_data.jsonl\n"
        "# (541 prompts) and IFBench_test.jsonl (300 prompts); written by `python tests/test_leakage.py FILES`.\n"
        + "\n".join(sorted(known))
        + "\n"
    )
    return len(known)


if __name__ == "__main__":
    import sys

    print(write_fingerprints(sys.argv[1:]), "sentences")
