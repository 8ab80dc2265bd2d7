import json

import pytest

from selftune.data.records import read_records
from selftune.errors import RecordError

USER = {"role": "user", "content": "Say hi"}
ANSWER = {"role": "assistant", "content": "hi"}
GOOD_PAIR = {
    "id": "p1",
    "prompt": [USER],
    "chosen": [ANSWER],
    "rejected": [{"role": "assistant", "content": "no"}],
    "negative_source": "policy",
}

# (kind, good first line, bad second line, expected message after "file:2: ")
BAD_FILES = [
    ("prompts", {"id": "a", "messages": [USER]}, '{"id": "b", "messages": [', "json: Expecting value at column 26"),
    ("prompts", {"id": "a", "messages": [USER]}, {"messages": [USER]}, "id: missing"),
    (
        "prompts",
        {"id": "a", "messages": [USER]},
        {"id": "a", "messages": [USER]},
        "id: duplicate 'a' (first on line 1)",
    ),
    (
        "prompts",
        {"id": "a", "messages": [USER]},
        {"id": "b", "messages": [{"role": "bot", "content": "x"}]},
        "messages[0].role: unknown value 'bot' (expected 'system', 'user', 'assistant')",
    ),
    (
        "prompts",
        {"id": "a", "messages": [USER]},
        {"id": "b", "messages": [USER], "split": "dev"},
        "split: unknown value 'dev' (expected 'train', 'eval')",
    ),
    ("prompts", {"id": "a", "messages": [USER]}, {"id": 7, "messages": [USER]}, "id: expected string, got int"),
    (
        "sft",
        {"id": "a", "prompt": [USER], "completion": [ANSWER]},
        {"id": "b", "prompt": [USER], "completion": [{"role": "assistant", "content": "  "}]},
        "completion[0].content: empty text",
    ),
    (
        "sft",
        {"id": "a", "prompt": [USER], "completion": [ANSWER]},
        {"id": "b", "prompt": [USER], "completion": [USER]},
        "completion: messages must have role 'assistant', not 'user'",
    ),
    (
        "sft",
        {"id": "a", "prompt": [USER], "completion": [ANSWER]},
        {"id": "b", "prompt": [USER], "completion": []},
        "completion: must not be empty",
    ),
    ("pairs", GOOD_PAIR, {**GOOD_PAIR, "id": "p2", "rejected": [ANSWER]}, "rejected: identical to chosen"),
    (
        "pairs",
        GOOD_PAIR,
        {k: v for k, v in GOOD_PAIR.items() if k != "negative_source"} | {"id": "p2"},
        "negative_source: missing",
    ),
    (
        "samples",
        {"prompt_id": "a", "model": "m", "completion": "x", "score": 1.0, "sample_index": 0},
        {"prompt_id": "a", "model": "m", "completion": "y", "score": 0.5, "sample_index": 0},
        "sample_index: duplicate ('a', 0) (first on line 1)",
    ),
    (
        "samples",
        {"prompt_id": "a", "model": "m", "completion": "x", "score": 1.0, "sample_index": 0},
        {"prompt_id": "a", "model": "m", "completion": "y", "score": 1.5, "sample_index": 1},
        "score: Input should be less than or equal to 1",
    ),
    (
        "generate",
        {"id": "a", "prompt": "hi"},
        {"id": "b"},
        "prompt: give exactly one of 'prompt' (a string) or 'messages'",
    ),
]


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


@pytest.mark.parametrize("kind,good,bad,expected", BAD_FILES)
def test_bad_line_gives_file_line_field_problem(tmp_path, kind, good, bad, expected):
    path = tmp_path / f"{kind}.jsonl"
    write(path, [good, bad])
    with pytest.raises(RecordError) as caught:
        read_records(path, kind)
    assert caught.value.problems == [f"{path}:2: {expected}"]


def test_every_bad_line_is_reported(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write(path, [{"id": "a", "messages": [USER]}, "not json", {"id": "c"}, {"id": "d", "messages": [ANSWER]}])
    with pytest.raises(RecordError) as caught:
        read_records(path, "prompts")
    assert [p.split(":")[1] for p in caught.value.problems] == ["2", "3", "4"]
    assert caught.value.problems[2].endswith("messages: the last message must have role 'user', not 'assistant'")


def test_good_files_parse_and_keep_extra_fields(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write(path, [GOOD_PAIR | {"chosen_score": 1.0, "rejected_score": 0.0, "extra": 3}, "", GOOD_PAIR | {"id": "p2"}])
    pairs = read_records(path, "pairs")
    assert [p.id for p in pairs] == ["p1", "p2"]
    assert pairs[0].model_dump()["extra"] == 3


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n")
    with pytest.raises(RecordError, match="holds no records"):
        read_records(path, "sft")


def _prompt_line(constraints, pid="p1"):
    import json

    return json.dumps({"id": pid, "messages": [{"role": "user", "content": "Write."}], "constraints": constraints})


@pytest.mark.parametrize(
    "constraints,named",
    [
        ([{"type": "lowercse"}], "constraints[0].type: unknown constraint type 'lowercse'"),
        ([{"type": "word_count", "kwargs": {"relation": "about", "n": 5}}], "constraints[0].kwargs: not valid for"),
        ([{"type": "lowercase"}, {"type": "word_count", "kwargs": {}}], "constraints[1].kwargs"),
    ],
)
def test_constraint_types_and_kwargs_are_checked_when_the_file_is_read(tmp_path, constraints, named):
    """Issue 16 defect 3: an unknown constraint type or bad kwargs failed only after every answer
    had been generated, with a traceback; `validate` called such a file valid."""
    path = tmp_path / "prompts.jsonl"
    path.write_text(_prompt_line([{"type": "lowercase"}], "ok") + "\n" + _prompt_line(constraints) + "\n")
    with pytest.raises(RecordError) as caught:
        read_records(path, "prompts")
    assert f"{path}:2: {named}" in str(caught.value)


def test_a_byte_order_mark_is_accepted_and_non_utf8_or_a_folder_is_a_named_error(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _prompt_line([{"type": "lowercase"}]).encode() + b"\n")
    assert [r.id for r in read_records(path, "prompts")] == ["p1"]
    path.write_bytes(_prompt_line([{"type": "lowercase"}]).encode() + b"\n\xff\xfe broken\n")
    with pytest.raises(RecordError, match=rf"{path}:2: not UTF-8 text \(byte 0xff at column 1,"):
        read_records(path, "prompts")
    # A bad byte mid-line, after a byte-order mark: the line and column an editor shows.
    path.write_bytes(b"\xef\xbb\xbf" + _prompt_line([{"type": "lowercase"}]).encode() + b'\n{"id": "\xd1x"}\n')
    with pytest.raises(RecordError, match=rf"{path}:2: not UTF-8 text \(byte 0xd1 at column 9,"):
        read_records(path, "prompts")
    with pytest.raises(RecordError, match="is a folder"):
        read_records(tmp_path, "prompts")
