"""What a model allows and needs, known before its weights load: its context window, and the memory
a generation or a training step will take against the memory this machine has.

    shape = model_shape("builtin:smollm2-135m-instruct")      # config.json and safetensors headers only
    shape.context                                               # 8192
    estimate = training_memory(shape, sequences=8, length=1024, gradient_checkpointing=False, device="cpu")
    estimate.describe()    # "about 14.8 GiB (runtime 0.55, weights 0.75, activations 9.0, logits 2.3, ...)"
    check_fits(estimate, "sft", "lower sft.per_device_batch_size ...")         # LimitError when over

The estimates are simple sums over the model's shape whose coefficients were measured on this
project's development CPU (bf16 autocast, transformers' SDPA attention; docs/performance.md,
"Memory"): the peak resident memory of SFT on SmolLM2-135M at 256 to 2048 tokens per batch grew by
1.45 MiB per token without gradient checkpointing, of which the logits' share (fp32 log-softmax and
its gradient over a 49152-token vocabulary) is about 6.2 bytes per vocabulary entry, the tiny test
model's whole slope. Every stage records its estimate beside the measured peak in its manifest, and
a test holds them within a stated factor of each other.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from selftune.errors import SelftuneError
from selftune.models.specs import check_safetensors, resolve_model_path

GIB = 2**30

# Resident memory of a process that has imported torch, transformers, peft and trl and built a
# Trainer, before any model (measured: 0.55 to 0.58 GiB on the tiny model); a generating process
# imports less, so this overstates it by about 0.3 GiB.
RUNTIME_BYTES = int(0.55 * GIB)
# Activations kept for the backward pass, per token and decoder layer, in bytes: about 40 per
# hidden unit and 11 per MLP unit under bf16 autocast (fitted to SmolLM2-135M: hidden 576, MLP 1536,
# 30 layers: 1.22 MB per token beside the logits).
ACTIVATION_BYTES_PER_HIDDEN = 40
ACTIVATION_BYTES_PER_MLP_UNIT = 11
# With gradient checkpointing each layer keeps its input (fp32 and its bf16 copy) and one layer's
# activations exist at a time, twice while it is recomputed under its gradient.
CHECKPOINTED_BYTES_PER_HIDDEN = 8
# The logits of every trained token: bf16 logits, their fp32 log-softmax and its gradient.
LOGIT_BYTES_PER_VOCAB_ENTRY = 6.2
# The continuous engine's peak beyond its KV cache: prefill activations, the slot copies while rows
# move and the sampler's fp32 probabilities (measured 8 to 17% above the cache's own size).
KV_OVERHEAD = 1.15
# Generation refuses to plan on more than this share of the memory available when it starts.
USABLE_SHARE = 0.9


class LimitError(SelftuneError):
    """A setting or an input beyond what the model or the machine allows: a prompt or an answer
    budget beyond the context window, or work that would not fit in memory."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model's config that decide its context and its memory."""

    spec: str
    context: int | None  # max_position_embeddings (or the architecture's equivalent); None if unknown
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    parameters: int
    linear_parameters: int  # in the decoder layers' linear modules (what autocast copies to bf16)

    def kv_bytes(self, slots: int, capacity: int, dtype_bytes: int) -> int:
        """Keys and values of every layer for `slots` sequences of `capacity` positions."""
        return 2 * self.layers * slots * self.kv_heads * self.head_dim * capacity * dtype_bytes

    def lora_parameters(self, rank: int) -> int:
        """Trainable parameters of a rank-`rank` adapter on every linear module of the decoder layers."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = (self.hidden + q) + 2 * (self.hidden + kv) + (q + self.hidden)
        per_layer += 2 * (self.hidden + self.intermediate) + (self.intermediate + self.hidden)
        return self.layers * per_layer * rank


@dataclass
class MemoryEstimate:
    """An estimated peak in bytes, by part, on `device` (cpu: resident memory; cuda: one GPU)."""

    device: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def gib(self) -> float:
        return self.total / GIB

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in self.parts.items() if value)
        return f"about {self.gib:.2f} GiB ({parts})"

    def record(self) -> dict:
        """What a manifest keeps: the total and its parts, in GiB."""
        return {"estimate_gib": round(self.gib, 3), **{f"{k}_gib": round(v / GIB, 3) for k, v in self.parts.items()}}


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def context_of(config) -> int | None:
    """The longest sequence a model's config allows, or None where the config does not say."""
    config = _text_config(config)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def shape_from_config(config, spec: str, parameters: int | None = None) -> ModelShape | None:
    """A model's shape from its transformers config (`parameters` counted elsewhere, or estimated
    from the config); None for a config without the decoder's usual fields."""
    text = _text_config(config)
    hidden = getattr(text, "hidden_size", None)
    layers = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    if not (hidden and layers and heads):
        return None
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    vocab = getattr(text, "vocab_size", None) or 32000
    q, kv = heads * head_dim, kv_heads * head_dim
    linear = layers * (hidden * (q + 2 * kv) + q * hidden + 3 * hidden * intermediate)
    tied = getattr(text, "tie_word_embeddings", True)
    return ModelShape(
        spec=spec,
        context=context_of(config),
        layers=layers,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        parameters=parameters or linear + vocab * hidden * (1 if tied else 2),
        linear_parameters=linear,
    )


@functools.lru_cache(maxsize=16)
def _shape(path: str, spec: str, trust_remote_code: bool) -> ModelShape | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None  # a hub id not in the cache while offline: its limits are checked when it loads
    return shape_from_config(config, spec, _safetensors_parameters(Path(path)))


def _safetensors_parameters(folder: Path) -> int | None:
    """Parameter count from the safetensors headers of a local checkpoint (no tensor is read)."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    return sum(math.prod(t["shape"]) for file in files for t in check_safetensors(file).values())


def model_shape(spec: str, *, trust_remote_code: bool = False) -> ModelShape | None:
    """The shape of a model spec from its config (a GGUF spec is converted once first, as loading
    would), or None where it cannot be known without the network."""
    return _shape(resolve_model_path(spec), spec, trust_remote_code)


# ---------------------------------------------------------------------------------------------
# Context
# ---------------------------------------------------------------------------------------------


def check_length_setting(shape: ModelShape | None, value: int, setting: str, *, answer: bool = False) -> None:
    """A token count setting within the context window: a training max_length up to it, an answer
    budget (`answer`) below it, leaving its prompt at least one token."""
    if shape is None or shape.context is None:
        return
    if value > shape.context or (answer and value == shape.context):
        bound = f"below {shape.context}" if answer else f"to at most {shape.context}"
        raise LimitError(
            f"{setting} is {value} tokens, beyond what the {shape.context}-token context window of "
            f"{shape.spec} allows; set it {bound}"
        )


@dataclass
class ContextCheck:
    """Which prompts fit the context window with their answer budget; the ones that do not were
    skipped (over_context: skip) as (id, prompt tokens, budget)."""

    kept: list[int]
    skipped: list[tuple[str, int, int]]
    longest: int = 0  # the most tokens of a kept prompt with its answer budget

    def record(self) -> dict:
        return {"over_context_skipped": len(self.skipped), "over_context_ids": [s[0] for s in self.skipped[:20]]}


def check_prompts_fit(
    shape: ModelShape | None,
    ids: list[str],
    prompt_tokens: list[int],
    budgets: list[int],
    *,
    where: str,
    over_context: str = "error",
    option: str = "generation.over_context: skip",
) -> ContextCheck:
    """Every prompt's tokens plus its answer budget within the context window: the first that is
    not is an error naming it (`over_context: error`), or every such prompt is skipped and counted
    (`skip`)."""
    if shape is None or shape.context is None:
        return ContextCheck(list(range(len(ids))), [])
    kept, skipped = [], []
    for k, (name, tokens, budget) in enumerate(zip(ids, prompt_tokens, budgets)):
        if tokens + budget <= shape.context:
            kept.append(k)
            continue
        if over_context != "skip":
            over = sum(t + b > shape.context for t, b in zip(prompt_tokens, budgets))
            raise LimitError(
                f"{where}: prompt {name} has {tokens} tokens, which with its {budget}-token answer budget "
                f"exceed the {shape.context}-token context window of {shape.spec} ({over} of {len(ids)} "
                f"prompts do); shorten them, lower the budget, or skip them and count them with {option}"
            )
        skipped.append((name, tokens, budget))
    return ContextCheck(kept, skipped, max((prompt_tokens[k] + budgets[k] for k in kept), default=0))


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def available_bytes(device: str) -> int:
    """Memory this process can still take: free GPU memory on cuda, available RAM otherwise."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0])
    return int(psutil.virtual_memory().available)


def resident_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def generation_memory(
    shape: ModelShape, *, slots: int, capacity: int, dtype_bytes: int, device: str = "cpu"
) -> MemoryEstimate:
    """Peak of a generating process: the runtime, the weights in their dtype, the KV cache of
    `slots` sequences of `capacity` positions and the engine's working memory around it, and the
    sampler's fp32 probabilities over the vocabulary. Loading reads the checkpoint's fp32 weights
    before the cast, which can be the higher peak; the estimate is the higher of the two."""
    weights = shape.parameters * dtype_bytes
    kv = shape.kv_bytes(slots, capacity, dtype_bytes)
    working = int(kv * (KV_OVERHEAD - 1)) + slots * shape.vocab * 4 * 3
    runtime = RUNTIME_BYTES if device == "cpu" else 0
    loading = shape.parameters * 4 if device == "cpu" else 0
    if loading > kv + working:
        return MemoryEstimate(device, {"runtime": runtime, "weights": weights, "loading": loading})
    return MemoryEstimate(device, {"runtime": runtime, "weights": weights, "kv_cache": kv, "working": working})


def training_memory(
    shape: ModelShape,
    *,
    sequences: int,
    length: int,
    gradient_checkpointing: bool,
    lora_rank: int = 16,
    device: str = "cpu",
    quantized: bool = False,
) -> MemoryEstimate:
    """Peak of one training step over `sequences` sequences of `length` tokens: the runtime, fp32
    weights (4-bit ones where quantized) with autocast's bf16 copies of the linear weights, the
    adapter with its gradient and AdamW's two moments, the activations kept for the backward pass
    (per layer, or only each layer's input with gradient checkpointing) and the logits."""
    tokens = sequences * length
    layer = ACTIVATION_BYTES_PER_HIDDEN * shape.hidden + ACTIVATION_BYTES_PER_MLP_UNIT * shape.intermediate
    if gradient_checkpointing:
        activations = tokens * (shape.layers * CHECKPOINTED_BYTES_PER_HIDDEN * shape.hidden + 2 * layer)
    else:
        activations = tokens * shape.layers * layer
    if quantized:
        weights = shape.parameters // 2 + shape.linear_parameters * 2  # 4-bit + bf16 dequantized per layer, about
    else:
        weights = shape.parameters * 4 + shape.linear_parameters * 2
    return MemoryEstimate(
        device,
        {
            "runtime": RUNTIME_BYTES if device == "cpu" else 0,
            "weights": weights,
            "adapter": shape.lora_parameters(lora_rank) * 4 * 4,
            "activations": activations,
            "logits": int(tokens * shape.vocab * LOGIT_BYTES_PER_VOCAB_ENTRY),
        },
    )


def check_fits(estimate: MemoryEstimate, where: str, remedy: str) -> None:
    """Refuse work whose estimated peak exceeds what this machine has for it (the memory available
    now plus what this process already holds, on the CPU; free memory on a GPU)."""
    have = available_bytes(estimate.device) + (resident_bytes() if estimate.device == "cpu" else 0)
    if estimate.total > have:
        raise LimitError(
            f"{where} needs {estimate.describe()}, more than the {have / GIB:.1f} GiB "
            f"{'free on the GPU' if estimate.device != 'cpu' else 'of memory this machine has available'}; "
            f"{remedy}"
        )


def fitting_slots(model, slots: int, least: int, capacity: int, stats: dict | None = None) -> int:
    """`slots` sequences in flight on a loaded `model`, or fewer (never under `least`, one prompt's
    samples) when their KV cache of `capacity` positions would not fit in the memory available
    now: said in a warning, and an error when even `least` does not fit. `stats` gets the slots
    and the cache's size."""
    parameters = list(model.parameters())
    shape = shape_from_config(
        model.config, getattr(model, "selftune_spec", "the model"), sum(p.numel() for p in parameters)
    )
    if shape is None:
        return slots
    dtype_bytes, device = parameters[0].element_size(), str(parameters[0].device)
    have = int(available_bytes(device) * USABLE_SHARE)  # the cache and its working memory may take this
    per_slot = max(1, int(shape.kv_bytes(1, capacity, dtype_bytes) * KV_OVERHEAD))
    need = per_slot * slots
    fitted = slots if need <= have else max(least, min(slots, have // per_slot))
    if stats is not None:
        stats.update(slots=fitted, kv_cache_gib=round(shape.kv_bytes(fitted, capacity, dtype_bytes) / GIB, 3))
    if fitted == slots:
        return slots
    if fitted * per_slot > have:
        raise LimitError(
            f"generation: {fitted} sequences of up to {capacity} tokens (prompt and answer budget) need "
            f"{fitted * per_slot / GIB:.1f} GiB of KV cache, more than the {have / GIB:.1f} GiB available; "
            "lower the answer budget (max_new_tokens) or the answers per prompt, or shorten the prompts"
        )
    logging.getLogger("selftune.generation").warning(
        "generation: %d sequences of up to %d tokens would need %.1f GiB of KV cache and %.1f GiB are "
        "available: %d in flight at a time instead (generation.batch_size)",
        slots,
        capacity,
        need / GIB,
        have / GIB,
        fitted,
    )
    return fitted
