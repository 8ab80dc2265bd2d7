"""Export: a GGUF file that transformers loads back with the same greedy answers, and a Hugging
Face folder with a model card."""

import shutil

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from selftune.cli import app
from selftune.export import ExportError, check_gguf, write_gguf

runner = CliRunner()


def test_a_tiny_llama_exported_to_gguf_f32_answers_exactly_as_before(tiny_model_dir, tmp_path):
    heard = []  # progress: (label, done, total)
    path = write_gguf(tiny_model_dir, tmp_path / "tiny.gguf", "f32", progress=lambda *call: heard.append(call))
    assert path.read_bytes()[:4] == b"GGUF"
    result = check_gguf(path, tiny_model_dir, progress=lambda *call: heard.append(call))
    assert result.identical == result.prompts == 3
    tensors = len(load_file(tiny_model_dir / "model.safetensors"))
    assert [call for call in heard if call[1] == call[2]] == [
        ("converting tensors to f32", tensors, tensors),
        ("answering with the merged model", 3, 3),
        ("answering with the gguf model", 3, 3),
    ]


@pytest.mark.slow  # two more GGUF loads (~20 s each); `make test-slow`
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_smaller_gguf_weights_load_back_and_answer(tiny_model_dir, tmp_path, quant):
    full = write_gguf(tiny_model_dir, tmp_path / "f32.gguf", "f32")
    small = write_gguf(tiny_model_dir, tmp_path / f"{quant}.gguf", quant)
    assert small.stat().st_size < full.stat().st_size * (0.6 if quant == "f16" else 0.4)
    result = check_gguf(small, tiny_model_dir)
    assert result.prompts == 3 and result.first_answer  # loads and answers; agreement is reported


def test_an_unsupported_architecture_is_named(tmp_path, smollm_tokenizer_dir):
    from tests.conftest import build_tiny_model

    phi3 = build_tiny_model(tmp_path / "phi3", smollm_tokenizer_dir, arch="phi3")
    with pytest.raises(ExportError, match="GGUF export supports llama, mistral models; .* is 'phi3'"):
        write_gguf(phi3, tmp_path / "x.gguf")


def test_hf_export_has_a_model_card_with_the_eval_table_and_loads(finished_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    result = runner.invoke(app, ["export", str(run_dir), "--to", "hf", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "| model | prompt strict | instruction strict | vs base (95% CI) | p |" in card and "| dpo |" in card
    assert "round-1/sft" in card and "## Recipe" in card
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.model_type == "llama"
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()


def test_the_model_card_lineage_walks_the_run_plan_and_skips_what_it_cannot_read(finished_run, tmp_path):
    from selftune.export import model_card
    from selftune.run.folder import Run

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    (run_dir / "round-1" / "pairs" / "manifest.json").write_text("{")  # damaged
    (run_dir / "round-1" / "notes").mkdir()  # not a stage of the plan
    (run_dir / "round-1" / "notes" / "manifest.json").write_text("{}")
    card = model_card(Run(run_dir), "dpo-r1", run_dir / "round-1" / "dpo" / "merged")
    lineage = card.split("## Lineage")[1].split("## Recipe")[0]
    stages = [line.split(" | ")[0].removeprefix("| ") for line in lineage.splitlines() if line.startswith("| round-")]
    assert stages == [f"round-1/{s}" for s in ("prompts", "sample", "sft-data", "sft", "dpo", "evaluate", "report")]


def test_push_without_the_hub_is_a_clear_error_and_keeps_the_export(finished_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(run_dir), "--to", "hf", "--out", str(out), "--push", "someone/tuned"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ExportError) and "could not push" in str(result.exception)
    assert (out / "README.md").is_file()  # the export stays on disk


def test_export_options_are_checked(finished_run):
    bad = runner.invoke(app, ["export", str(finished_run), "--to", "onnx"])
    assert bad.exit_code == 2 and "onnx" in bad.output
    bad = runner.invoke(app, ["export", str(finished_run), "--to", "gguf", "--quant", "q4"])
    assert bad.exit_code == 2 and "q4" in bad.output


def test_the_llama_cpp_check_loads_without_extra_buffers_and_restores_the_defaults():
    """llama.cpp's AMX repack buffers crashed q8_0 files on AMX CPUs: the check turns them off for its
    own load only, and leaves llama-cpp-python's defaults as they were, even when the load fails."""
    import ctypes
    import types

    from selftune.export import _plain_cpu_buffers

    class Params(ctypes.Structure):
        _fields_ = [("n_gpu_layers", ctypes.c_int32), ("use_extra_bufts", ctypes.c_bool)]

    def defaults():
        params = Params()
        params.use_extra_bufts = True
        return params

    inner = types.SimpleNamespace(llama_model_params=Params, llama_model_default_params=defaults)
    fake = types.SimpleNamespace(llama_cpp=inner)
    with _plain_cpu_buffers(fake):
        assert inner.llama_model_default_params().use_extra_bufts is False
    assert inner.llama_model_default_params is defaults
    with pytest.raises(RuntimeError), _plain_cpu_buffers(fake):
        raise RuntimeError("load failed")
    assert inner.llama_model_default_params is defaults
    assert inner.llama_model_default_params().use_extra_bufts is True
