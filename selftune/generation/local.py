"""Generators in this process: around a model already loaded (`make_generator`: the HF backend, or
the continuous engine where its self-check passes on this model), or from a model spec loaded here
and unloaded when done (`open_local`; what `open_generator` and each generation replica use).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator

from selftune.errors import ConfigError
from selftune.generation.engine import ContinuousGenerator, engine_supports
from selftune.generation.hf import HFGenerator
from selftune.generation.types import Generator
from selftune.generation.vllm import VLLMGenerator
from selftune.models import load_model, load_tokenizer, resolve_model_path, unload

BACKENDS = ("auto", "hf", "continuous", "vllm")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"generation backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


# Prompts the continuous engine's logits are checked on before it serves a model.
_CHECK_PROMPTS = [
    [{"role": "user", "content": "Name three colors."}],
    [{"role": "user", "content": "Write one sentence about the sea, all in lowercase."}],
]


def make_generator(
    model, tokenizer, *, backend: str = "auto", batch_size: int = 32, trained: bool = False
) -> Generator:
    """A generator around an already loaded transformers model: 'hf' (`model.generate`) or
    'continuous' (`selftune.generation.engine`); 'auto' picks the continuous engine when its logits match a
    plain forward of this model (checked on two prompts), else the HF backend with a warning.
    `trained`: the model's trainable weights change between calls (online RL)."""
    check_backend(backend)
    if backend == "hf":
        return HFGenerator(model, tokenizer, batch_size=batch_size)

    engine = ContinuousGenerator(model, tokenizer, batch_size=batch_size, trained=trained)
    reason = engine_supports(
        engine, _CHECK_PROMPTS if getattr(tokenizer, "chat_template", None) else ["Name three colors:", "The sea is"]
    )
    if reason is None:
        return engine
    if backend == "continuous":
        raise ConfigError(
            f"the continuous engine cannot serve this model: {reason}; use generation.backend: hf or auto"
        )
    logging.getLogger("selftune.generation").warning(
        "continuous engine off for this model (%s); using the HF backend", reason
    )
    return HFGenerator(model, tokenizer, batch_size=batch_size)


@contextlib.contextmanager
def open_local(
    spec: str,
    *,
    backend: str = "auto",
    batch_size: int = 32,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    tensor_parallel_size: int = 1,
) -> Iterator[Generator]:
    """Load `spec` in this process behind a Generator (vLLM when `backend` is 'vllm', else
    `make_generator`), and unload it when the block ends."""
    # 'auto' stays 'auto' for make_generator: the continuous engine when its self-check passes on
    # this model, else the HF backend (it used to become 'continuous' here, which made a model the
    # engine cannot serve, such as Gemma2, an error instead of a fallback).
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    if backend == "vllm":
        generator = VLLMGenerator(
            resolve_model_path(spec), tokenizer, tensor_parallel_size=tensor_parallel_size, dtype=dtype
        )
        try:
            yield generator
        finally:
            del generator
            gc.collect()
        return
    model = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code)
    generator = make_generator(model, tokenizer, backend=backend, batch_size=batch_size)
    try:
        yield generator
    finally:
        generator.model = None
        unload(model)
