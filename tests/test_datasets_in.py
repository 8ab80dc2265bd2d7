"""TRL's standard dataset formats go into the sft and dpo stages as they are, from any data file."""

import json

import pytest

from selftune.data.records import read_dataset
from selftune.errors import RecordError

USER = {"role": "user", "content": "Name a colour."}
SYSTEM = {"role": "system", "content": "Be brief."}
ANSWER = {"role": "assistant", "content": "blue"}
WORSE = {"role": "assistant", "content": "I cannot answer that."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_sft_conversational_messages_split_at_the_trailing_assistant_turns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [SYSTEM, USER, ANSWER]}])
    [record] = read_dataset(path, "sft")
    assert record.id == "row-1"
    assert [m.role for m in record.prompt] == ["system", "user"] and record.completion[0].content == "blue"


def test_sft_prompt_completion_strings(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 7, "prompt": "Name a colour.", "completion": "blue"}])
    [record] = read_dataset(path, "sft")
    assert record.id == "7" and record.prompt[0].role == "user" and record.completion[0].role == "assistant"


def test_sft_prompt_completion_message_lists_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": [USER], "completion": [ANSWER]}]), path)
    [record] = read_dataset(path, "sft")
    assert record.prompt[0].content == "Name a colour." and record.completion[0].content == "blue"


def test_sft_from_csv_and_a_datasets_folder(tmp_path):
    import datasets

    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,completion\nName a colour.,blue\n")
    assert read_dataset(csv_path, "sft")[0].completion[0].content == "blue"
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"messages": [USER, ANSWER]}]).save_to_disk(str(folder))
    assert read_dataset(folder, "sft")[0].completion[0].content == "blue"


def test_preference_strings_get_roles_and_a_negative_source(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Name a colour.", "chosen": "blue", "rejected": "no"}])
    [pair] = read_dataset(path, "pairs")
    assert pair.prompt[0].role == "user" and pair.chosen[0].role == "assistant" and pair.negative_source == "imported"


def test_preference_message_lists_from_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": [USER], "chosen": [ANSWER], "rejected": [WORSE], "negative_source": "x"}]))
    [pair] = read_dataset(path, "pairs")
    assert pair.rejected[0].content == "I cannot answer that." and pair.negative_source == "x"


def test_implicit_prompt_preferences_take_the_shared_turns_as_the_prompt(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": [SYSTEM, USER, ANSWER], "rejected": [SYSTEM, USER, WORSE]}])
    [pair] = read_dataset(path, "pairs")
    assert [m.role for m in pair.prompt] == ["system", "user"]
    assert pair.chosen[0].content == "blue" and pair.rejected[0].content == "I cannot answer that."


@pytest.mark.parametrize(
    "kind,row,expected",
    [
        ("sft", {"messages": [USER]}, "d.jsonl:1: messages: needs user turns followed by the assistant"),
        ("sft", {"text": "just text"}, "d.jsonl:1: text: a plain-text row has no prompt/answer split"),
        ("sft", {"prompt": "x", "completion": ""}, "d.jsonl:1: completion[0].content: empty text"),
        ("pairs", {"chosen": [ANSWER], "rejected": [WORSE]}, "d.jsonl:1: prompt: missing, and chosen and rejected"),
        ("pairs", {"prompt": "x", "chosen": "same", "rejected": "same"}, "d.jsonl:1: rejected: identical to chosen"),
        ("pairs", {"prompt": "x", "chosen": "a"}, "d.jsonl:1: rejected: missing"),
    ],
)
def test_bad_trl_rows_name_file_line_and_field(tmp_path, kind, row, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(RecordError) as caught:
        read_dataset(path, kind)
    assert caught.value.problems[0].startswith(str(path.parent / expected)), caught.value.problems


def test_sft_and_dpo_commands_train_on_trl_files(tmp_path, tiny_model_dir):
    """`selftune sft --data` with conversational rows in Parquet, then `selftune dpo --pairs` with
    implicit-prompt preferences in JSONL: both train, and the manifests record those files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from selftune.cli import app
    from selftune.run.manifest import read_manifest

    conversations = [
        {"messages": [{"role": "user", "content": f"Say the number {i}."}, {"role": "assistant", "content": str(i)}]}
        for i in range(8)
    ]
    sft_data = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(conversations), sft_data)
    preferences = write_jsonl(
        tmp_path / "prefs.jsonl",
        [{"chosen": row["messages"], "rejected": [row["messages"][0], WORSE]} for row in conversations],
    )
    run = tmp_path / "run"
    common = ["--preset", "tiny", "--set", f"model.spec={tiny_model_dir}"]
    runner = CliRunner()
    sft = runner.invoke(app, ["sft", "--run", str(run), "--data", str(sft_data), *common])
    assert sft.exit_code == 0, sft.output + repr(sft.exception)
    assert "'loss':" not in sft.output  # no raw Trainer log dicts on the console
    manifest = read_manifest(run / "round-1" / "sft")
    assert manifest.metrics["examples"] == 8 and manifest.inputs["sft"].path == str(sft_data)
    dpo = runner.invoke(app, ["dpo", "--run", str(run), "--pairs", str(preferences), *common])
    assert dpo.exit_code == 0, dpo.output + repr(dpo.exception)
    manifest = read_manifest(run / "round-1" / "dpo")
    assert manifest.metrics["pairs"] == 8 and manifest.metrics["steps"] >= 1
    assert "eval_pairs" not in manifest.inputs  # the run has none of its own for these pairs
