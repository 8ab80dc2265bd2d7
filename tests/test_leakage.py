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

from selftune.data.constraints.types import CONSTRAINTS
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
    records = build_prompts(n_train=600, n_eval=200, seed=0)
    train = "\n".join(r.messages[0].content for r in records if r.split == "train")
    for record in records:
        if record.split == "eval":
            for sentence in re.split(r"(?<=[.!?])\s+", record.messages[0].content):
                assert sentence not in train, (record.id, sentence)
    for kind in CONSTRAINTS.values():
        assert not set(kind.wordings["train"]) & set(kind.wordings["eval"]), kind.name


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
