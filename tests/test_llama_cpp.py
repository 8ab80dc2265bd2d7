"""The exported GGUF in a real client: llama.cpp itself (llama-cpp-python, the `llama` extra) opens
the file `selftune export --to gguf` writes and predicts, teacher-forced, the merged model's next
token at every position. Slow: the extra builds llama.cpp from source here (~8 minutes, once), and
the embedded model is checked too. `make test-slow` runs it; without the extra it skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftune.export import check_in_llama_cpp, write_gguf

pytest.importorskip("llama_cpp", reason="the llama extra (pip install 'selftune[llama]') is not installed")
pytestmark = pytest.mark.slow


def _report(label: str, found) -> None:
    print(
        f"\n{label}: top-1 {found.top1_agree}/{found.positions}, max |logit diff| {found.max_abs_logit_diff}, "
        f"tokenization {found.tokenization_identical}/{found.tokenization_texts}"
    )


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_llama_cpp_predicts_the_tiny_models_next_tokens(tiny_model_dir, tmp_path, quant):
    found = check_in_llama_cpp(write_gguf(tiny_model_dir, tmp_path / f"tiny-{quant}.gguf", quant), tiny_model_dir)
    _report(f"tiny {quant}", found)
    assert found.sequences == 3 and found.positions > 3 * 32
    # The GGUF's vocabulary, merges and pre-tokenizer split text as the model's own tokenizer does.
    assert found.tokenization_identical == found.tokenization_texts == 4
    if quant == "f32":
        assert found.top1_agree == found.positions
        assert found.max_abs_logit_diff < 1e-2
    else:  # rounded weights: reported, and still nearly always the same prediction
        assert found.top1_agree >= 0.9 * found.positions


@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_llama_cpp_predicts_the_embedded_models_next_tokens(builtin_home, tmp_path, monkeypatch, quant):
    monkeypatch.setenv("SELFTUNE_HOME", str(builtin_home))
    from selftune.models import resolve_model_path

    model_dir = Path(resolve_model_path("builtin:smollm2-135m-instruct"))
    found = check_in_llama_cpp(write_gguf(model_dir, tmp_path / f"smollm2-{quant}.gguf", quant), model_dir)
    _report(f"SmolLM2-135M-Instruct {quant}", found)
    assert found.tokenization_identical == found.tokenization_texts
    if quant == "f32":
        assert found.top1_agree == found.positions
        assert found.max_abs_logit_diff < 0.2
    else:
        assert found.top1_agree >= 0.9 * found.positions
