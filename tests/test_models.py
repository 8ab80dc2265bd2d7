import os
import re

import pytest
import torch

from selftune import models
from selftune.errors import ModelSpecError
from selftune.models import load_model, load_tokenizer, resolve_model_path, specs, unload


def test_builtin_is_converted_once(builtin_home, monkeypatch):
    monkeypatch.setenv("SELFTUNE_HOME", str(builtin_home))

    def no_second_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(specs, "_convert_gguf", no_second_conversion)
    path = resolve_model_path("builtin:smollm2-135m-instruct")
    assert path == resolve_model_path("builtin:smollm2-135m-instruct")
    files = sorted(os.listdir(path))
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(f.endswith((".bin", ".gguf")) for f in files)
    config = (builtin_home / "models").glob("*/config.json")
    assert all("quantization_config" not in c.read_text() for c in config)


@pytest.mark.slow
def test_converted_builtin_matches_the_gguf_model(builtin_home, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SELFTUNE_HOME", str(builtin_home))
    spec = "builtin:smollm2-135m-instruct"
    tokenizer = load_tokenizer(spec)
    converted = load_model(spec, dtype="float32")
    gguf = models.builtin_gguf_path("smollm2-135m-instruct")
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a fruit."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.inference_mode():
        a = converted.generate(ids, max_new_tokens=16, do_sample=False)
        b = original.generate(ids, max_new_tokens=16, do_sample=False)
    assert a.tolist() == b.tolist()


def test_unload_frees_parameters_and_reports_peak(tiny_model_dir):
    model = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    weight = model.model.embed_tokens.weight
    assert weight.device.type == "cpu"
    report = unload(model)
    assert report.device == "cpu" and report.peak_bytes > 0
    # Even though this test still holds the module, its parameters no longer hold memory.
    assert model.model.embed_tokens.weight.device.type == "meta"


def test_dtype_and_safetensors_only(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and not model.training
    unload(model)
    assert models.resolve_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
    # A checkpoint with only pickle weights is refused.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "model.safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match="only pickle files: pytorch_model.bin"):
        load_model(str(pickled), dtype="float32")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:nope", "unknown builtin model 'nope'"),
        ("./missing-dir", "model path missing-dir does not exist"),
        ("/no/such/run/round-4/dpo/merged", "model path /no/such/run/round-4/dpo/merged does not exist"),
        ("missing.gguf", "GGUF file missing.gguf does not exist"),
        ("a/b/c", "is not builtin:NAME"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ModelSpecError, match=re.escape(message)):
        resolve_model_path(spec)


def test_hub_ids_pass_through():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
