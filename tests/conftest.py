"""Shared fixtures: a tiny random Llama-style model with the real SmolLM2 tokenizer.

The tokenizer is read from the embedded GGUF once per test session; the model is built from a
config with random weights (seeded), so every test runs in seconds without network access.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

import pytest
import torch

from selftune.generation.types import Completion, SamplingParams


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own SELFTUNE_HOME unless it asks for the shared converted builtin."""
    if "SELFTUNE_TEST_KEEP_HOME" not in os.environ:
        monkeypatch.setenv("SELFTUNE_HOME", str(tmp_path_factory.mktemp("home")))


def selftune_modules() -> list:
    """Every module of the selftune package, imported."""
    import selftune

    names = [info.name for info in pkgutil.walk_packages(selftune.__path__, "selftune.")]
    return [selftune, *(importlib.import_module(name) for name in names)]


@pytest.fixture
def patch_everywhere(monkeypatch):
    """`patch_everywhere(module, name, replacement)`: replace a selftune function in its own module
    and in every selftune module that imported it by name (modules import at their top, so a
    patch on the defining module alone would not reach them); undone after the test."""

    def patch(module, name: str, replacement) -> int:
        original = getattr(module, name)
        places = 0
        for candidate in selftune_modules():
            for attribute, value in list(vars(candidate).items()):
                if value is original:
                    monkeypatch.setattr(candidate, attribute, replacement)
                    places += 1
        return places

    return patch


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer (BPE, ChatML template), saved as a plain HF tokenizer folder."""
    from transformers import AutoTokenizer

    from selftune.models import builtin_gguf_path

    gguf = builtin_gguf_path("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm-tokenizer")
    tokenizer.save_pretrained(out)
    return out


TINY_ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "phi3")


def build_tiny_model(
    out: Path, tokenizer_dir: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0, arch: str = "llama"
) -> Path:
    """A random checkpoint of architecture `arch` with the SmolLM2 vocabulary, saved as safetensors."""
    import transformers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    extra = {
        "llama": {},
        "qwen2": {},
        "mistral": {"sliding_window": None},
        # Gemma2 alternates sliding-window and global layers and soft-caps its logits.
        "gemma2": {"head_dim": hidden // 4, "sliding_window": 16, "query_pre_attn_scalar": hidden // 4},
        "phi3": {},  # fused qkv_proj and gate_up_proj
    }[arch]
    names = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "gemma2": "Gemma2", "phi3": "Phi3"}[arch]
    config = getattr(transformers, f"{names}Config")(**common, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{names}ForCausalLM")(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), smollm_tokenizer_dir)


@pytest.fixture(scope="session")
def builtin_home(tmp_path_factory) -> Path:
    """A SELFTUNE_HOME holding the converted embedded model (converted once per session)."""
    home = tmp_path_factory.mktemp("builtin-home")
    previous = os.environ.get("SELFTUNE_HOME")
    os.environ["SELFTUNE_HOME"] = str(home)
    try:
        from selftune.models import resolve_model_path

        resolve_model_path("builtin:smollm2-135m-instruct")
    finally:
        if previous is None:
            os.environ.pop("SELFTUNE_HOME", None)
        else:
            os.environ["SELFTUNE_HOME"] = previous
    return home


CHAT_PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write a haiku about the sea, all in lowercase letters please."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colors."}],
    [{"role": "user", "content": "What is 2 + 2? Explain your reasoning step by step in detail."}],
    "Instruction: say hello\nResponse:",
]


class MockGenerator:
    """Answers every prompt with queued texts, cycling; records what it was asked."""

    name = "mock"

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def generate(self, prompts, params: SamplingParams, progress=None, stop_when=None):
        self.calls.append((prompts, params))
        out = []
        for i, _ in enumerate(prompts):
            texts = self.answers(i) if callable(self.answers) else self.answers
            answers = []
            for s in range(params.n):
                text = texts[s % len(texts)]
                failed = stop_when(i, s, text) if stop_when else None
                answers.append(Completion(i, s, text, "rejected" if failed else "stop", 5, 3, s, rejected_by=failed))
            out.append(answers)
        return out


@pytest.fixture(scope="session")
def finished_run_settings() -> list[str]:
    """The --set overrides (besides model.spec) of `finished_run`."""
    return ["pairs.k=1"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model_dir, finished_run_settings) -> Path:
    """A run of the tiny preset on the tiny model with every stage complete; tests copy it before
    they change anything."""
    import selftune

    root = tmp_path_factory.mktemp("finished") / "run"
    cfg = selftune.load_config("tiny", overrides=[f"model.spec={tiny_model_dir}", *finished_run_settings])
    steps = selftune.run_pipeline(root, cfg, on_event=lambda line: None)
    assert all(step.action == "ran" for step in steps)
    return root
