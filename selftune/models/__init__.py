"""Models: what a spec names and whether it can be used (`specs`: builtin, GGUF conversion,
checkpoint and LoRA-target checks), and models in memory (`loading`: device, dtype, load, unload
with peak memory).

Usage:
    from selftune.models import load_model, load_tokenizer, unload
    model = load_model("builtin:smollm2-135m-instruct")        # dtype picked for this hardware
    tokenizer = load_tokenizer("builtin:smollm2-135m-instruct")
    report = unload(model)                                      # MemoryReport(peak_bytes=..., ...)
"""

from selftune.models.loading import (
    MemoryReport,
    cpu_bf16_speedup,
    default_device,
    end_of_turn_ids,
    load_model,
    load_tokenizer,
    matmul_seconds,
    peak_memory_bytes,
    reset_peak_memory,
    resolve_dtype,
    unload,
)
from selftune.models.specs import (
    BUILTIN_PREFIX,
    BUILTINS,
    DEFAULT_MODEL,
    builtin_gguf_path,
    check_lora_targets,
    check_model_spec,
    check_safetensors,
    convert_gguf,
    converted_dir,
    resolve_model_path,
    selftune_home,
    sha256_file,
)

__all__ = [
    "BUILTINS",
    "BUILTIN_PREFIX",
    "DEFAULT_MODEL",
    "MemoryReport",
    "builtin_gguf_path",
    "check_lora_targets",
    "check_model_spec",
    "check_safetensors",
    "convert_gguf",
    "converted_dir",
    "cpu_bf16_speedup",
    "default_device",
    "end_of_turn_ids",
    "load_model",
    "load_tokenizer",
    "matmul_seconds",
    "peak_memory_bytes",
    "reset_peak_memory",
    "resolve_dtype",
    "resolve_model_path",
    "selftune_home",
    "sha256_file",
    "unload",
]
