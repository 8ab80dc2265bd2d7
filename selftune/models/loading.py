"""Models in memory: the device and dtype they run in (bf16 where the hardware runs it fast), loading
a model or tokenizer from a spec (safetensors only), unloading it with its peak memory, and the
tokens that close an assistant turn.

Usage:
    from selftune.models import load_model, load_tokenizer, unload
    model = load_model("builtin:smollm2-135m-instruct")        # dtype picked for this hardware
    tokenizer = load_tokenizer("builtin:smollm2-135m-instruct")
    report = unload(model)                                      # MemoryReport(peak_bytes=..., ...)
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from safetensors import SafetensorError

from selftune.errors import ConfigError, MissingExtraError, ModelSpecError
from selftune.models.specs import check_model_spec, resolve_model_path

# transformers is imported where a model or tokenizer loads (its model classes cost ~3 s to import).

# Tokens that close an assistant turn in common chat templates; checked against the vocabulary.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|end|>")


# ---------------------------------------------------------------------------------------------
# Device and dtype
# ---------------------------------------------------------------------------------------------


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def matmul_seconds(dtype_name: str, size: int = 512, repeats: int = 8) -> float:
    """Best-of-`repeats` seconds for one (size x size) @ (size x size) matmul on the CPU."""
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up: first call pays for kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def cpu_bf16_speedup() -> float:
    """How many times faster a bf16 matmul runs than fp32 on this CPU (measured once)."""
    return matmul_seconds("float32") / matmul_seconds("bfloat16")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' means bf16 where the hardware runs it fast, fp32 otherwise."""
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}") from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # On CPUs without native bf16 units bf16 is emulated and slower than fp32: measure.
    return torch.bfloat16 if cpu_bf16_speedup() >= 1.5 else torch.float32


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryReport:
    """Peak memory while a model was loaded: RSS high-water mark on CPU, allocator peak on GPU."""

    device: str
    peak_bytes: int

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    # Writing 5 to clear_refs resets the kernel's RSS high-water mark (VmHWM) for this process,
    # which lets us report a per-model peak rather than the process-lifetime one.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass

    return int(psutil.Process().memory_info().rss)


# ---------------------------------------------------------------------------------------------
# Loading and unloading
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _load_errors_named(spec: str):
    """What transformers raises for an unreadable model (offline hub id, broken files) as a
    ModelSpecError naming the spec; the cause stays attached for a debugger."""

    try:
        yield
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(f"model {spec!r} could not be loaded: {first}") from exc


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    """The tokenizer of a model spec, with a pad token set (the end-of-sequence token if none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    with _load_errors_named(spec):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
):
    """Load a causal LM from a spec, in eval mode, on `device` (default: cuda if present).

    Reads safetensors only; `trust_remote_code` stays off unless asked for. The peak-memory
    counter is reset here so `unload()` reports this model's own peak.
    """
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    path = resolve_model_path(spec)
    torch_dtype = resolve_dtype(dtype, device)
    reset_peak_memory(device)
    kwargs: dict = dict(dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if load_in_4bit:
        if not device.startswith("cuda"):
            raise ConfigError("4-bit loading needs a CUDA GPU (bitsandbytes); set model.load_in_4bit: false")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MissingExtraError("4-bit loading needs bitsandbytes: pip install 'selftune[gpu]'")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    check_model_spec(spec, trust_remote_code=trust_remote_code)
    with _load_errors_named(spec):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_4bit:
        model.to(device)
    model.eval()
    model.selftune_spec = spec
    return model


def unload(model) -> MemoryReport:
    """Free a model's memory now and report its peak.

    Parameters are moved to the meta device, which releases their storage even if a caller still
    holds a reference to the module; then garbage is collected and the accelerator cache emptied.
    """
    try:
        device = str(next(model.parameters()).device)
    except StopIteration:
        device = "cpu"
    report = MemoryReport(device=device, peak_bytes=peak_memory_bytes(device))
    try:
        model.to("meta")
    except (RuntimeError, ValueError, NotImplementedError):
        pass  # quantized modules refuse .to(); dropping references below still frees them
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return report


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the template's end-of-turn token and EOS."""
    ids: list[int] = []
    # Each candidate is looked up and converted back, not found in get_vocab(): building the whole
    # vocabulary took 30 ms on SmolLM2's tokenizer, and masking asks once per SFT example (18 of 21 s
    # of tokenizing 600 long examples). An unknown token converts to the unknown token's id, whose
    # own token differs: the round trip keeps exactly the tokens in the vocabulary.
    for token in _END_OF_TURN_TOKENS:
        found = tokenizer.convert_tokens_to_ids(token)
        if isinstance(found, int) and tokenizer.convert_ids_to_tokens(found) == token:
            ids.append(found)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))
