"""The bad-input corpus: every case runs a real command line in-process and must end with a
non-zero exit, no traceback, a message naming the file:line:field (or the option), no model
loaded, and every file that existed before (a finished run's outputs included) byte-identical.

A case is (id, files to write, the command line, the expected words). In a command line, {tmp}
is the case's folder, {run} a copy of a finished tiny run and {model} the tiny model folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import OUTCOMES, ModelLoaded, bytes_lost, snapshot

USER = {"role": "user", "content": "Write a haiku about tea."}
ANSWER = {"role": "assistant", "content": "green leaves in hot water"}
PROMPT = {"id": "p1", "messages": [USER], "constraints": [{"type": "lowercase"}]}
SAMPLE = {"prompt_id": "p1", "model": "m", "completion": "hi", "score": 1.0, "sample_index": 0}
SFT = {"id": "s1", "prompt": [USER], "completion": [ANSWER]}
PAIR = {
    "id": "q1",
    "prompt": [USER],
    "chosen": [ANSWER],
    "rejected": [{"role": "assistant", "content": "GREEN LEAVES"}],
    "negative_source": "original",
}
GENERATE = {"id": "g1", "prompt": "Say hi."}
LONG = {"content": "green leaves in hot water " * 180}  # ~900 tokens


def jsonl(*rows: Any) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


@dataclass
class Case:
    id: str
    args: list[str]
    expect: list[str]  # each must appear in the console text
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    setup: Any = None  # setup(tmp, model_dir) for files that need the model folder


def validate(kind: str, text: str | bytes, expect: list[str], name: str = "bad.jsonl") -> dict:
    return dict(args=["validate", f"{{tmp}}/{name}", "--kind", kind], files={name: text}, expect=expect)


def imported(text: str | bytes, expect: list[str], name: str = "src.jsonl") -> dict:
    return dict(
        args=["prompts", "build", "--run", "{run}", "--source", f"{{tmp}}/{name}"], files={name: text}, expect=expect
    )


def generate_with(*options: str, expect: list[str]) -> dict:
    return dict(
        args=["generate", "--model", "{model}", "--prompts", "{tmp}/in.jsonl", "--out", "{tmp}/out.jsonl", *options],
        files={"in.jsonl": jsonl(GENERATE)},
        expect=expect,
    )


def replace(path: Path, text: str) -> None:
    """Write a new file in place of `path` (the run copy's files are hard links to the shared run)."""
    path.unlink()
    path.write_text(text)


def model_folder(make):
    """A setup that builds a broken model folder `{tmp}/bad-model` from the tiny model."""

    def setup(tmp: Path, model_dir: Path) -> None:
        folder = tmp / "bad-model"
        shutil.copytree(model_dir, folder)
        make(folder)

    return setup


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _only_pickle(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _auto_map(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))


def _broken_config(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _corrupt_header(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00" * 32  # the JSON header's start
    weights.write_bytes(bytes(data))


PROBLEM = {"id": "a1", "messages": [{"role": "user", "content": "What is 6 times 7?"}], "answer": "42"}


def verified_with(function: str, expect: list[str], source: str | None = None, *rows) -> dict:
    """`sample` on the finished run with scorer kind function: `function` names the verifier (a
    {tmp}/v.py holding `source` when given), the prompts are word problems (`rows`, else two)."""
    files = {"p.jsonl": jsonl(*(rows or (PROMPT | PROBLEM, PROMPT | PROBLEM | {"id": "a2"})))}
    if source is not None:
        files["v.py"] = source
    return {
        "args": ["sample", "--run", "{run}", "--prompts", "{tmp}/p.jsonl"]
        + ["--set", "sample.scorer.kind=function", "--set", f"sample.scorer.function={function}"],
        "files": files,
        "expect": expect,
    }


def sample_with_model(spec: str, expect: list[str], **extra) -> dict:
    return dict(args=["sample", "--run", "{run}", "--set", f"model.spec={spec}"], expect=expect, **extra)


CASES = [
    # ---- record files, through `selftune validate` ----
    Case(
        "broken-json-line", **validate("prompts", jsonl(PROMPT, '{"id": "p2", "messages": ['), ["bad.jsonl:2: json:"])
    ),
    Case(
        "crlf-missing-field",
        **validate("prompts", jsonl(PROMPT, {"id": "p2"}).replace("\n", "\r\n"), ["bad.jsonl:2: messages: missing"]),
    ),
    Case("blank-only", **validate("sft", "\n   \n\n", ["holds no records"])),
    Case(
        "ten-megabyte-line",
        **validate(
            "prompts",
            jsonl(PROMPT, {"id": "p2", "messages": [{"role": "bot", "content": "x" * 10_000_000}]}),
            ["bad.jsonl:2: messages[0].role: unknown value 'bot'"],
        ),
    ),
    Case("wrong-type-id", **validate("sft", jsonl(SFT | {"id": 5}), ["bad.jsonl:1: id: expected string"])),
    Case(
        "extra-fields-and-wrong-type", **validate("samples", jsonl(SAMPLE | {"x": 1, "score": "high"}), [":1: score:"])
    ),
    Case(
        "duplicate-ids", **validate("pairs", jsonl(PAIR, PAIR), ["bad.jsonl:2: id: duplicate 'q1' (first on line 1)"])
    ),
    Case(
        "duplicate-sample",
        **validate("samples", jsonl(SAMPLE, SAMPLE), ["bad.jsonl:2: sample_index: duplicate"]),
    ),
    Case(
        "chosen-equals-rejected",
        **validate("pairs", jsonl(PAIR | {"rejected": [ANSWER]}), ["bad.jsonl:1: rejected: identical to chosen"]),
    ),
    Case("json-array-file", **validate("prompts", json.dumps([PROMPT]) + "\n", [":1: record: expected a JSON object"])),
    Case(
        "nan-literal", **validate("samples", jsonl(SAMPLE).replace("1.0", "NaN"), [":1: json: NaN is not valid JSON"])
    ),
    Case(
        "infinity-literal",
        **validate("pairs", jsonl(PAIR | {"chosen_score": 9}).replace("9", "Infinity"), ["Infinity"]),
    ),
    Case("empty-id", **validate("prompts", jsonl(PROMPT | {"id": ""}), [":1: id: empty text"])),
    Case("blank-prompt-id", **validate("samples", jsonl(SAMPLE | {"prompt_id": "  "}), [":1: prompt_id: empty text"])),
    Case(
        "chosen-role-user",
        **validate("pairs", jsonl(PAIR | {"chosen": [USER]}), [":1: chosen: messages must have role 'assistant'"]),
    ),
    Case(
        "rejected-role-system",
        **validate(
            "pairs",
            jsonl(PAIR | {"rejected": [{"role": "system", "content": "x"}]}),
            [":1: rejected: messages must have role 'assistant'"],
        ),
    ),
    Case("score-true", **validate("samples", jsonl(SAMPLE | {"score": True}), [":1: score: expected a number"])),
    Case("score-above-one", **validate("samples", jsonl(SAMPLE | {"score": 1.5}), [":1: score:"])),
    Case("negative-sample-index", **validate("samples", jsonl(SAMPLE | {"sample_index": -1}), [":1: sample_index:"])),
    Case(
        "sft-prompt-ends-with-assistant",
        **validate(
            "sft", jsonl(SFT | {"prompt": [USER, ANSWER]}), [":1: prompt: the last message must have role 'user'"]
        ),
    ),
    Case(
        "pair-prompt-ends-with-assistant",
        **validate("pairs", jsonl(PAIR | {"prompt": [ANSWER]}), [":1: prompt: the last message must have role 'user'"]),
    ),
    Case(
        "sft-completion-empty",
        **validate("sft", jsonl(SFT | {"completion": []}), [":1: completion: must not be empty"]),
    ),
    Case("bad-role", **validate("prompts", jsonl(PROMPT | {"messages": [{"role": "bot", "content": "x"}]}), ["role"])),
    Case("bad-split", **validate("prompts", jsonl(PROMPT | {"split": "test"}), [":1: split: unknown value 'test'"])),
    Case(
        "whitespace-prompt",
        **validate(
            "prompts", jsonl(PROMPT | {"messages": [{"role": "user", "content": " \t "}]}), ["content: empty text"]
        ),
    ),
    Case("non-utf8", **validate("prompts", b'{"id": "\xff\xfe"}\n', ["not UTF-8 text"])),
    Case("folder-as-file", args=["validate", "{tmp}", "--kind", "sft"], expect=["is a folder"]),
    Case("missing-file", args=["validate", "{tmp}/nothing.jsonl", "--kind", "sft"], expect=["file not found"]),
    Case(
        "unknown-constraint-type",
        **validate("prompts", jsonl(PROMPT | {"constraints": [{"type": "lowercse"}]}), [":1: constraints[0].type"]),
    ),
    Case(
        "bad-constraint-kwargs",
        **validate(
            "prompts",
            jsonl(PROMPT | {"constraints": [{"type": "word_count", "kwargs": {"relation": "at most", "n": "ten"}}]}),
            [":1: constraints[0].kwargs"],
        ),
    ),
    Case(
        "missing-negative-source",
        **validate(
            "pairs", jsonl({k: v for k, v in PAIR.items() if k != "negative_source"}), [":1: negative_source: missing"]
        ),
    ),
    Case(
        "generate-both-forms",
        **validate("generate", jsonl(GENERATE | {"messages": [USER]}), [":1: prompt: give exactly one"]),
    ),
    Case("bare-string-line", **validate("sft", jsonl('"hello"'), [":1: record: expected a JSON object, got str"])),
    Case("bom-then-bad-line", **validate("sft", "\ufeff" + jsonl(SFT, {"id": "s2"}), ["bad.jsonl:2: prompt: missing"])),
    Case("kind-not-a-kind", args=["validate", "{tmp}/x.jsonl", "--kind", "pears"], expect=["--kind", "not a kind"]),
    # ---- importing prompts: `prompts build --source` into a finished run ----
    Case(
        "import-duplicate-ids",
        **imported(jsonl({"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}), ["src.jsonl:2: id: duplicate 'a'"]),
    ),
    Case(
        "import-json-array-in-jsonl",
        **imported(json.dumps([{"prompt": "x"}]) + "\n", ["src.jsonl:1: record: expected a JSON object"]),
    ),
    Case(
        "import-bad-role",
        **imported(jsonl({"messages": [{"role": "bot", "content": "x"}]}), ["src.jsonl:1: messages[0].role"]),
    ),
    Case(
        "import-bad-split",
        **imported(jsonl({"prompt": "x", "split": "dev"}), ["src.jsonl:1: split: unknown value 'dev'"]),
    ),
    Case(
        "import-whitespace-prompt",
        **imported(jsonl({"prompt": "   "}), ["src.jsonl:1: messages[0].content: empty text"]),
    ),
    Case("import-non-utf8", **imported(b"prompt\n\xff\n", ["not UTF-8 text"], name="src.csv")),
    Case(
        "import-missing-file",
        args=["prompts", "build", "--run", "{run}", "--source", "{tmp}/none.jsonl"],
        expect=["file not found"],
    ),
    Case(
        "import-plain-folder",
        args=["prompts", "build", "--run", "{run}", "--source", "{tmp}"],
        expect=["not a saved `datasets` folder"],
    ),
    Case("import-malformed-csv", **imported('id,prompt\na,"hello\nb,x,extra\n', ["src.csv:"], name="src.csv")),
    Case(
        "import-csv-wrong-columns",
        **imported("id,prompt\na,hello,extra\n", ["src.csv:2: csv: 3 columns"], name="src.csv"),
    ),
    Case("import-csv-empty-prompt", **imported("id,prompt\na,\n", ["src.csv:2: prompt: missing"], name="src.csv")),
    Case("import-txt", **imported("Say hi\n", ["unsupported format '.txt'"], name="src.txt")),
    Case(
        "import-json-object", **imported(json.dumps({"prompt": "x"}), ["expected an array of objects"], name="src.json")
    ),
    Case(
        "import-unknown-constraint",
        **imported(jsonl({"prompt": "x", "constraints": [{"type": "nope"}]}), ["src.jsonl:1: constraints[0].type"]),
    ),
    # ---- configs and overrides ----
    Case(
        "broken-yaml",
        args=["run", "--run-dir", "{tmp}/r", "--config", "{tmp}/c.yaml"],
        files={"c.yaml": "sft:\n  epochs: [1\n"},
        expect=["c.yaml:", "not valid YAML"],
    ),
    Case(
        "missing-config-file",
        args=["run", "--run-dir", "{tmp}/r", "--config", "{tmp}/none.yaml"],
        expect=["none.yaml: config file not found"],
    ),
    Case(
        "config-not-a-mapping",
        args=["config", "show", "--config", "{tmp}/c.yaml"],
        files={"c.yaml": "- a\n- b\n"},
        expect=["expected a mapping"],
    ),
    Case(
        "override-infinite-lr",
        args=["sft", "--run", "{run}", "--set", "sft.learning_rate=.inf"],
        expect=["sft.learning_rate"],
    ),
    Case(
        "override-bool-lr",
        args=["sft", "--run", "{run}", "--set", "sft.learning_rate=true"],
        expect=["sft.learning_rate"],
    ),
    Case("override-name-is-a-path", args=["run", "--preset", "tiny", "--set", "name=../../x"], expect=["name"]),
    Case(
        "override-typo",
        args=["sample", "--run", "{run}", "--set", "sample.kk=2"],
        expect=["unknown key 'sample.kk'", "did you mean 'sample.k'"],
    ),
    Case("override-no-equals", args=["config", "show", "--set", "sample.k"], expect=["must look like key.path=value"]),
    Case("override-bad-yaml-value", args=["config", "show", "--set", "sample.k=[2"], expect=["not valid YAML"]),
    Case(
        "unknown-negative-source",
        args=["pairs", "--run", "{run}", "--set", "pairs.sources={{nosuch: 1.0}}"],
        expect=["pairs.sources"],
    ),
    Case(
        "reward-model-without-model",
        args=["sample", "--run", "{run}", "--set", "sample.scorer.kind=reward-model"],
        expect=["reward_model"],
    ),
    Case(
        "evaluate-lm-eval-task-folder-missing",
        args=["evaluate", "{run}", "--task", "arc_easy", "--tasks-from", "{run}/nosuch"],
        expect=["evaluate.lm_eval.include_path", "nosuch"],
    ),
    Case(
        "run-with-an-lm-eval-task-folder-missing",
        args=[
            "run",
            "--run-dir",
            "{run}",
            "--set",
            "evaluate.lm_eval.tasks=[arc_easy]",
            "--set",
            "evaluate.lm_eval.include_path={run}/nosuch",
        ],
        expect=["evaluate.lm_eval.include_path", "nosuch"],
    ),
    Case(
        "evaluate-lm-eval-limit",
        args=["evaluate", "{run}", "--task", "arc_easy", "--task-limit", "2.5"],
        expect=["evaluate.lm_eval.limit"],
    ),
    Case("evaluate-models-nosuch", args=["evaluate", "{run}", "--models", "nosuch"], expect=["--models", "nosuch"]),
    Case("evaluate-models-typo", args=["evaluate", "{run}", "--models", "base,sfft"], expect=["--models", "sfft"]),
    Case(
        "config-evaluate-models-nosuch",
        args=["evaluate", "--model", "a={model}", "--prompts", "{tmp}/p.jsonl"],
        files={
            "p.jsonl": jsonl(
                PROMPT | {"split": "eval"}, PROMPT | {"id": "p2", "split": "eval", "constraints": [{"type": "nope"}]}
            )
        },
        expect=["p.jsonl:2: constraints[0].type"],
    ),
    Case("unknown-preset", args=["config", "show", "--preset", "tinny"], expect=["tinny"]),
    Case(
        "bad-lora-target",
        args=["sft", "--run", "{run}", "--set", "sft.lora.target_modules=[q_proj, qkv]"],
        expect=["sft.lora.target_modules: 'qkv' match no module"],
    ),
    Case(
        "bad-dpo-lora-target",
        args=["dpo", "--run", "{run}", "--set", "dpo.lora.target_modules=[attn]"],
        expect=["dpo.lora.target_modules: 'attn' match no module"],
    ),
    # ---- grpo settings (the stage command refuses them before anything loads) ----
    Case(
        "grpo-group-of-one",
        args=["grpo", "--run", "{run}", "--set", "grpo.num_generations=1"],
        expect=["grpo.num_generations"],
    ),
    Case(
        "grpo-kl-not-finite",
        args=["grpo", "--run", "{run}", "--set", "grpo.beta=nan"],
        expect=["grpo.beta"],
    ),
    Case(
        "grpo-partial-groups",
        args=["grpo", "--run", "{run}", "--set", "grpo.num_generations=5"],
        expect=["must be a multiple of num_generations (5)"],
    ),
    Case(
        "grpo-judged-by-itself",
        args=["run", "--preset", "tiny", "--run-dir", "{tmp}/r", "--set", "grpo.enabled=true"]
        + ["--set", "sample.scorer.kind=judge"],
        expect=["sample.scorer.judge_model"],
    ),
    Case(
        "grpo-model-not-enabled",
        args=["run", "--preset", "tiny", "--run-dir", "{tmp}/r", "--set", "evaluate.models=[base,grpo]"],
        expect=["grpo.enabled is false"],
    ),
    Case(
        "batch-size-zero",
        args=["run", "--preset", "tiny", "--run-dir", "{tmp}/r", "--set", "sft.per_device_batch_size=0"],
        expect=["sft.per_device_batch_size"],
    ),
    # ---- model specs ----
    Case(
        "gguf-that-is-text", **sample_with_model("{tmp}/fake.gguf", ["not a GGUF file"], files={"fake.gguf": "hello"})
    ),
    Case("gguf-missing", **sample_with_model("{tmp}/none.gguf", ["does not exist"])),
    Case(
        "folder-without-weights",
        **sample_with_model("{tmp}/bad-model", ["holds no safetensors weights"], setup=model_folder(_no_weights)),
    ),
    Case(
        "folder-with-only-pickle",
        **sample_with_model(
            "{tmp}/bad-model", ["only pickle files: pytorch_model.bin"], setup=model_folder(_only_pickle)
        ),
    ),
    Case(
        "truncated-safetensors",
        **sample_with_model("{tmp}/bad-model", ["model.safetensors: truncated"], setup=model_folder(_truncate)),
    ),
    Case(
        "corrupt-safetensors-header",
        **sample_with_model("{tmp}/bad-model", ["model.safetensors"], setup=model_folder(_corrupt_header)),
    ),
    Case(
        "custom-code-not-trusted",
        **sample_with_model(
            "{tmp}/bad-model", ["custom model code", "trust_remote_code"], setup=model_folder(_auto_map)
        ),
    ),
    Case(
        "broken-config-json",
        **sample_with_model("{tmp}/bad-model", ["config.json: not valid JSON"], setup=model_folder(_broken_config)),
    ),
    Case(
        "hub-id-offline",
        **sample_with_model("someorg/nosuch-model", ["not in the local Hugging Face cache"]),
        env={"HF_HUB_OFFLINE": "1"},
    ),
    # Not in the cache, and the hub unreachable (as here) or the repository unknown (with network).
    Case("hub-id-unknown", **sample_with_model("someorg/nosuch-model", ["hub id 'someorg/nosuch-model' is not in"])),
    Case("not-a-model-spec", **sample_with_model("a/b/c", ["is not builtin:NAME"])),
    Case(
        "run-with-a-bad-model",
        args=["run", "--run-dir", "{run}", "--set", "model.spec={tmp}/fake.gguf"],
        files={"fake.gguf": "hello"},
        expect=["not a GGUF file"],
    ),
    Case(
        "generate-with-a-truncated-model",
        args=["generate", "--model", "{tmp}/bad-model", "--prompts", "{tmp}/in.jsonl", "--out", "{tmp}/o.jsonl"],
        files={"in.jsonl": jsonl(GENERATE)},
        setup=model_folder(_truncate),
        expect=["truncated"],
    ),
    Case(
        "merge-missing-adapter",
        args=["merge", "--base", "{model}", "--adapter", "{tmp}/none", "--out", "{tmp}/m"],
        expect=["no such adapter folder"],
    ),
    Case(
        "merge-pickle-adapter",
        args=["merge", "--base", "{model}", "--adapter", "{tmp}/ad", "--out", "{tmp}/m"],
        files={"ad/adapter_config.json": "{}", "ad/adapter_model.bin": b"x"},
        expect=["adapter_model.bin", "never loads"],
    ),
    # ---- generate options ----
    Case("generate-n-zero", **generate_with("-n", "0", expect=["-n"])),
    Case("generate-max-new-tokens-zero", **generate_with("--max-new-tokens", "0", expect=["--max-new-tokens"])),
    Case("generate-negative-temperature", **generate_with("--temperature", "-1", expect=["--temperature"])),
    Case("generate-top-p-zero", **generate_with("--top-p", "0", expect=["--top-p"])),
    Case("generate-bogus-backend", **generate_with("--backend", "bogus", expect=["bogus"])),
    Case("generate-float64", **generate_with("--dtype", "float64", expect=["float64"])),
    Case("generate-batch-size-zero", **generate_with("--batch-size", "0", expect=["--batch-size"])),
    Case(
        "generate-out-is-a-folder",
        args=["generate", "--model", "{model}", "--prompts", "{tmp}/in.jsonl", "--out", "{tmp}"],
        files={"in.jsonl": jsonl(GENERATE)},
        expect=["is a folder"],
    ),
    Case(
        "generate-bad-prompt-row",
        args=["generate", "--model", "{model}", "--prompts", "{tmp}/in.jsonl", "--out", "{tmp}/o.jsonl"],
        files={"in.jsonl": jsonl(GENERATE, {"id": "g2"})},
        expect=["in.jsonl:2: prompt"],
    ),
    # ---- stage commands on a finished run ----
    Case(
        "sft-bad-data",
        args=["sft", "--run", "{run}", "--data", "{tmp}/d.jsonl"],
        files={"d.jsonl": jsonl(SFT, SFT | {"completion": [USER]})},
        expect=["d.jsonl:2: completion"],
    ),
    Case(
        "sample-bad-prompts",
        args=["sample", "--run", "{run}", "--prompts", "{tmp}/p.jsonl"],
        files={"p.jsonl": jsonl(PROMPT, PROMPT)},
        expect=["p.jsonl:2: id: duplicate"],
    ),
    Case(
        "sft-data-bad-samples",
        args=["sft-data", "--run", "{run}", "--samples", "{tmp}/s.jsonl"],
        files={"s.jsonl": jsonl(SAMPLE | {"score": True})},
        expect=["s.jsonl:1: score"],
    ),
    Case(
        "inspect-masks-bad-data",
        args=["inspect", "masks", "--data", "{tmp}/d.jsonl", "--model", "{model}"],
        files={"d.jsonl": jsonl({"id": "s"})},
        expect=["d.jsonl:1: prompt: missing"],
    ),
    Case(
        "dpo-on-an-edited-upstream",
        args=["dpo", "--run", "{run}"],
        setup=lambda tmp, model: replace(tmp / "run/round-1/pairs/pairs.jsonl", jsonl(PAIR)),
        expect=["changed after it was recorded"],
    ),
    Case(
        "evaluate-with-an-empty-manifest",
        args=["evaluate", "{run}"],
        setup=lambda tmp, model: replace(tmp / "run/round-1/prompts/manifest.json", ""),
        expect=["manifest.json: unreadable manifest"],
    ),
    Case("report-missing-run", args=["report", "{tmp}/nosuch"], expect=["nosuch: no such run folder"]),
    Case("evaluate-missing-run", args=["evaluate", "{tmp}/nosuch"], expect=["nosuch: no such run folder"]),
    Case("compare-missing-run", args=["compare", "{run}", "{tmp}/nosuch"], expect=["nosuch: no such run folder"]),
    Case(
        "run-unknown-from-stage", args=["run", "--run-dir", "{run}", "--from", "sfft"], expect=["unknown stage 'sfft'"]
    ),
    # ---- verifier functions (scorer kind function) and reference answers ----
    Case("verifier-missing-module", **verified_with("nowhere_module:verify", ["no module named 'nowhere_module'"])),
    Case(
        "verifier-missing-function",
        **verified_with(
            "{tmp}/v.py:verify", ["v.py defines no 'verify'"], "def check(prompts, completions):\n    ...\n"
        ),
    ),
    Case("verifier-missing-file", **verified_with("{tmp}/none.py:verify", ["no file", "none.py"])),
    Case(
        "verifier-wrong-arity",
        **verified_with(
            "{tmp}/v.py:verify",
            ["cannot take the call fn(prompts, completions, answer)", "fn(prompts, completions, **columns)"],
            "def verify(completion):\n    return [1.0]\n",
        ),
    ),
    Case(
        "verifier-wrong-length",
        **verified_with(
            "{tmp}/v.py:verify",
            ["returned 1 scores for 2 completions", "one per completion"],
            "def verify(prompts, completions, **kw):\n    return [1.0]\n",
        ),
    ),
    Case(
        "verifier-nan-score",
        **verified_with(
            "{tmp}/v.py:verify",
            ["returned a non-finite score (nan)"],
            "def verify(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n",
        ),
    ),
    Case(
        "verifier-raises-on-import",
        **verified_with("{tmp}/v.py:verify", ["importing", "failed: ZeroDivisionError"], "x = 1 / 0\n"),
    ),
    Case(
        "reference-not-a-number",
        **verified_with(
            "builtin:final_number",
            ["p.jsonl: prompt a2: answer: 'forty-two' is not a number"],
            None,
            PROMPT | PROBLEM,
            PROMPT | PROBLEM | {"id": "a2", "answer": "forty-two"},
        ),
    ),
    Case(
        "reference-bad-regex",
        **verified_with(
            "builtin:regex_match",
            ["p.jsonl: prompt a1: pattern: '([0-9]' is not a valid"],
            None,
            PROBLEM | {"pattern": "([0-9]"},
        ),
    ),
    Case(
        "reference-bad-json-schema",
        **verified_with(
            "builtin:json_schema",
            ["p.jsonl: prompt a1: schema: not a valid JSON Schema"],
            None,
            PROBLEM | {"schema": {"type": "object", "required": "n"}},
        ),
    ),
    Case(
        "run-with-a-missing-verifier",
        args=["run", "--run-dir", "{run}", "--set", "sample.scorer.kind=function"]
        + ["--set", "sample.scorer.function={tmp}/gone.py:verify"],
        expect=["verifier", "gone.py:verify", "no file"],
    ),
    # ---- limits: the context window and memory, checked before any weights load ----
    Case(
        "generate-budget-beyond-context",
        **generate_with("--max-new-tokens", "100000", expect=["--max-new-tokens allows answers of 100000 tokens"]),
    ),
    Case(
        "generate-prompt-beyond-context",
        args=["generate", "--model", "{model}", "--prompts", "{tmp}/in.jsonl", "--out", "{tmp}/out.jsonl"],
        files={"in.jsonl": jsonl(GENERATE, {"id": "g-long", "prompt": "Summarize: " + "word " * 1500})},
        expect=["in.jsonl: prompt g-long has", "1024-token context window", "--over-context skip"],
    ),
    Case(
        "sample-prompt-beyond-context",
        args=["sample", "--run", "{run}", "--prompts", "{tmp}/p.jsonl"],
        files={"p.jsonl": jsonl(PROMPT, PROMPT | {"id": "p-long", "messages": [USER | {"content": "tea " * 1500}]})},
        expect=["sample: prompt p-long has", "generation.over_context: skip"],
    ),
    Case(
        "run-budget-beyond-context",
        args=["run", "--run-dir", "{run}", "--set", "generation.max_new_tokens=100000"],
        expect=["generation.max_new_tokens is 100000 tokens", "1024-token context window"],
    ),
    Case(
        "sft-max-length-beyond-context",
        args=["sft", "--run", "{run}", "--set", "sft.max_length=4096"],
        expect=["sft.max_length is 4096 tokens", "set it to at most 1024"],
    ),
    Case(
        "dpo-max-length-beyond-context",
        args=["dpo", "--run", "{run}", "--set", "dpo.max_length=4096"],
        expect=["dpo.max_length is 4096 tokens"],
    ),
    # 512 examples of ~930 tokens in one batch: ~140 GiB on the tiny model (its logits alone).
    Case(
        "sft-batch-that-cannot-fit",
        args=["sft", "--run", "{run}", "--data", "{tmp}/long.jsonl"]
        + ["--set", "sft.per_device_batch_size=512", "--set", "sft.max_length=1024"],
        files={"long.jsonl": jsonl(*(SFT | {"id": f"s{i}", "completion": [ANSWER | LONG]} for i in range(512)))},
        expect=["sft: a step of 512 sequences of up to", "GiB", "lower sft.per_device_batch_size"],
    ),
    Case(
        "dpo-batch-that-cannot-fit",
        args=["dpo", "--run", "{run}", "--pairs", "{tmp}/long.jsonl"]
        + ["--set", "dpo.per_device_batch_size=256", "--set", "dpo.max_length=1024"],
        files={"long.jsonl": jsonl(*(PAIR | {"id": f"q{i}", "chosen": [ANSWER | LONG]} for i in range(256)))},
        expect=["dpo: a step of 512 sequences of up to", "lower dpo.per_device_batch_size"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_a_clear_error_that_changes_nothing(
    case, cli, tmp_path, finished_run, monkeypatch, tiny_model_dir
):
    if any("{run}" in arg for arg in case.args):
        # Hard links: a fast copy. Setups replace files (never write in place), and a command that
        # changed a file in place would fail this test before it could mislead another.
        shutil.copytree(finished_run, tmp_path / "run", symlinks=True, copy_function=os.link)
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if case.setup:
        case.setup(tmp_path, tiny_model_dir)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # a command that defaults to runs/NAME writes here, nowhere else
    args = [arg.format(tmp=tmp_path, run=tmp_path / "run", model=tiny_model_dir) for arg in case.args]
    before = snapshot(tmp_path)
    result = cli(args)
    after = snapshot(tmp_path)
    lost = bytes_lost(before, after)
    text = " ".join(result.output.split())
    if isinstance(result.error, ModelLoaded):
        outcome = "model loaded"
    elif result.error is not None or "Traceback" in result.output:
        outcome = "traceback"
    elif result.status == 0:
        outcome = "silent accept"
    elif all(" ".join(e.split()) in text for e in case.expect):
        outcome = "clear error"
    else:
        outcome = "unclear"
    OUTCOMES.append((case.id, outcome, lost))
    assert outcome == "clear error", f"{outcome}: exit {result.status}, {result.error!r}\n{result.output[-3000:]}"
    assert lost == 0 and set(after) == set(before), sorted(set(after) ^ set(before)) or "files changed"


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--model", "{model}", "--prompts", "{tmp}/in.jsonl", "--out", "{tmp}/out.jsonl"],
        ["sft", "--run", "{run}"],
        ["evaluate", "{run}", "--models", "base"],
    ],
    ids=["generate", "sft", "evaluate"],
)
def test_the_guard_stops_a_command_that_loads_a_model(command, cli, tmp_path, finished_run, tiny_model_dir):
    """The guard behind "no model loaded" reaches every module that loads one: given good input,
    these commands get as far as loading a model and are stopped there, not before and not after
    (modules import their helpers at their top, so a guard that patched one module would miss it)."""
    shutil.copytree(finished_run, tmp_path / "run", symlinks=True, copy_function=os.link)
    (tmp_path / "in.jsonl").write_text(jsonl(GENERATE))
    result = cli([arg.format(tmp=tmp_path, run=tmp_path / "run", model=tiny_model_dir) for arg in command])
    assert isinstance(result.error, ModelLoaded), f"exit {result.status}, {result.error!r}\n{result.output[-2000:]}"
    assert str(result.error).startswith("selftune loaded a model"), result.error  # not transformers' guard behind it
