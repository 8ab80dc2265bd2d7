"""Merge a LoRA adapter into its base and check the result.

The merged model's logits must match base + adapter (unmerged) on a few inputs within a
tolerance for the dtype; a mismatch is an error and nothing is written. A base trained as 4-bit
(QLoRA) is loaded unquantized in bf16 for the merge, i.e. dequantized first, then merged.

Usage:
    selftune merge --base builtin:smollm2-135m-instruct --adapter runs/demo/round-1/sft/adapter --out merged/
    from selftune.train.merge import merge_adapter
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from selftune.errors import SelftuneError
from selftune.models import check_model_spec, check_safetensors, default_device, load_model, load_tokenizer, unload
from selftune.run.files import atomic_dir

# peft (4.8 s) and transformers (~3 s) are imported when a merge runs.

CHECK_TEXTS = [
    "Write a haiku about the sea.",
    "Explain why the sky is blue in two sentences.",
    "List three fruits, all in lowercase.",
]


class MergeMismatchError(SelftuneError):
    """Merged logits differ from base + adapter beyond tolerance."""


@dataclass(frozen=True)
class MergeResult:
    path: Path
    max_logit_diff: float


def check_adapter(folder: Path) -> None:
    """A LoRA adapter folder that peft can load without running pickle: adapter_config.json and
    a complete adapter_model.safetensors (a `.bin` adapter is refused, never handed to torch.load)."""

    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder")
    if not (folder / "adapter_config.json").is_file():
        raise AdapterError(f"{folder}: holds no adapter_config.json, so it is not a LoRA adapter folder")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        pickled = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        raise AdapterError(
            f"{folder}: holds no adapter_model.safetensors"
            + (f" (only {', '.join(sorted(pickled))}: pickle files, which selftune never loads)" if pickled else "")
        )
    check_safetensors(weights)


class AdapterError(SelftuneError):
    """A LoRA adapter folder that cannot be loaded safely."""


def merge_adapter(
    base: str, adapter_dir: Path, out: Path, *, trust_remote_code: bool = False, dtype: str | None = None
) -> MergeResult:
    from peft import PeftModel

    check_adapter(Path(adapter_dir))
    check_model_spec(base, trust_remote_code=trust_remote_code)
    device = default_device()
    # fp32 on CPU keeps the check tight; bf16 on GPUs (also the dequantized form of a 4-bit base).
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    # The adapter folder carries the tokenizer and chat template used in training; prefer them.
    if (Path(adapter_dir) / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
    else:
        tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    batch = tokenizer(CHECK_TEXTS, return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        expected = model(**batch).logits.float()  # (B, T, vocab)
        merged = model.merge_and_unload()
        actual = merged(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    diff = (expected - actual).abs()[mask].max().item()
    scale = max(1.0, expected[mask].abs().max().item())
    tolerance = (1e-3 if dtype == "float32" else 5e-2) * scale
    if not diff <= tolerance:
        raise MergeMismatchError(
            f"merged logits differ from base + adapter by {diff:.3g} (tolerance {tolerance:.3g}); nothing written"
        )
    with atomic_dir(Path(out)) as scratch:
        merged.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
    unload(merged)
    return MergeResult(Path(out), diff)
