"""A continuous-batching generation engine on a transformers model, for CPUs (and any device).

Why not `model.generate`: a batch runs until its longest answer ends, every finished or rejected
row keeps computing, and each of a prompt's `n` samples prefills the whole prompt again. On a
2-core CPU those wasted token-forwards were most of the sampling stage's time. Why not an
existing engine: transformers' own continuous batching (`generate_batch`, paged attention) ran
2x slower than `generate` on the development CPU; CTranslate2 shares no prompt between samples
and cannot hand a finished row's slot to waiting work (see docs/performance.md for the figures).

How it works: a fixed set of `slots` (sequences in flight) shares one preallocated KV cache.

- The token prefix that every prompt shares (the chat template's system prompt) runs once; its
  keys and values are copied into every slot.
- Waiting prompts are admitted in groups as slots free up; a group is prefilled in one forward
  (left-padded, with explicit positions, so the last position of every row predicts its first
  answer token), and each prompt's keys and values are then copied to its `n` sample slots.
- Each decode step runs only live rows. A row that ends (end-of-turn token, token cap, or the
  `stop_when` hook: early rejection) leaves at once; the last live row moves into its slot, so
  live rows stay contiguous and a step reads the cache without copying it.
- Sampling uses the HF backend's per-row sampler (`selftune.generation.sampling.draw_tokens`): each answer
  owns a seeded random stream, so an answer depends on its seed, prompt and sample index only,
  never on batching or on which other prompts ran.

The engine needs a model that takes a `cache`, explicit `position_ids` and a 4D attention mask
(every Llama-like model in transformers does). `ContinuousGenerator.self_check` compares its
logits with a plain forward before use; `open_generator` falls back to the HF backend when they
differ.

Usage:
    from selftune.generation.engine import ContinuousGenerator
    generator = ContinuousGenerator(model, tokenizer, batch_size=64)
    answers = generator.generate(prompts, SamplingParams(n=4, temperature=0.8), stop_when=hook)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selftune.errors import ConfigError
from selftune.generation.packing import Swap, pack_linears, swapped_in
from selftune.generation.sampling import draw_tokens, encode_prompt, render_prompt, row_seed
from selftune.generation.types import Completion, ProgressCallback, Prompt, SamplingParams, StopWhen
from selftune.models import end_of_turn_ids
from selftune.models.limits import fitting_slots

logger = logging.getLogger("selftune.engine")


# Relative gap between the engine's logits and a plain forward's above which it is not used, by the
# model's dtype. Measured on SmolLM2-135M (a position off by one: the fault the check exists for):
# fp32 0.0 against 0.85; bf16 0.026 (its rounding: bf16 keeps ~3 significant digits, and the engine
# sums in another order than a plain forward) against 0.84.
ENGINE_TOLERANCE = 1e-3
HALF_PRECISION_TOLERANCE = 0.1


def engine_tolerance(dtype: torch.dtype) -> float:
    return HALF_PRECISION_TOLERANCE if dtype in (torch.bfloat16, torch.float16) else ENGINE_TOLERANCE


class _SlotLayer:
    """One layer's keys and values for every slot: (slots, kv heads, capacity, head dim).

    `plan` (set by `_SlotCache.plan`) says which slots the next forward writes (`start` ..
    `start + rows`), at which positions (rows, q), and how many positions its attention reads.
    """

    is_sliding = False
    is_compileable = False
    is_initialized = True

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def allocate(self, like: torch.Tensor, slots: int, capacity: int) -> None:
        _, heads, _, dim = like.shape
        self.keys = torch.zeros(slots, heads, capacity, dim, dtype=like.dtype, device=like.device)
        self.values = torch.zeros_like(self.keys)


class _SlotCache:
    """The engine's KV cache, in the shape transformers' attention layers expect of a `Cache`."""

    is_compileable = False

    def __init__(self, layers: int, slots: int, capacity: int):
        self.layers = [_SlotLayer() for _ in range(layers)]
        self.slots, self.capacity = slots, capacity
        self.start = 0
        self.positions: torch.Tensor | None = None  # (rows, q)
        self.width = 0

    # -- what transformers asks of a cache --------------------------------------------------
    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        if layer.keys is None:
            layer.allocate(key_states, self.slots, self.capacity)
        rows = key_states.shape[0]
        index = torch.arange(self.start, self.start + rows, device=key_states.device)[:, None]  # (rows, 1)
        layer.keys[index, :, self.positions] = key_states.transpose(1, 2)  # (rows, q, heads, dim)
        layer.values[index, :, self.positions] = value_states.transpose(1, 2)
        end = self.start + rows
        return layer.keys[self.start : end, :, : self.width], layer.values[self.start : end, :, : self.width]

    # -- engine side --------------------------------------------------------------------------
    def plan(self, start: int, positions: torch.Tensor, width: int) -> None:
        self.start, self.positions, self.width = start, positions, width

    def copy_slots(self, source: list[int], target: list[int], length: int) -> None:
        """Copy the first `length` positions of each source slot into its target slot."""
        if not source:
            return
        device = self.layers[0].keys.device
        src, dst = torch.tensor(source, device=device), torch.tensor(target, device=device)
        for layer in self.layers:
            layer.keys[dst, :, :length] = layer.keys[src, :, :length]
            layer.values[dst, :, :length] = layer.values[src, :, :length]

    def broadcast_prefix(self, length: int) -> None:
        """Slot 0's first `length` positions (the shared prefix) into every other slot."""
        for layer in self.layers:
            layer.keys[1:, :, :length] = layer.keys[:1, :, :length]
            layer.values[1:, :, :length] = layer.values[:1, :, :length]


@dataclass
class _Row:
    """One answer in flight, in slot `slot`."""

    prompt_index: int
    sample_index: int
    length: int  # tokens in the cache: prompt + answer so far
    seed: int | None
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with, less one: each prompt keeps at least its last token, whose
    position predicts the first answer token."""
    shortest = min(len(s) for s in sequences)
    length = 0
    first = sequences[0]
    while length < shortest and all(s[length] == first[length] for s in sequences):
        length += 1
    return max(0, min(length, shortest - 1))


class ContinuousGenerator:
    """Continuous batching with a shared prefix, per-prompt prefill and early rejection (see the
    module docstring). `batch_size` is the number of sequences in flight (slots)."""

    name = "continuous"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 64,
        stop_ids: list[int] | None = None,
        admit_share: float = 0.25,
        pack_weights: bool = True,
        trained: bool = False,
    ):
        self.model = model
        # fp32 on the CPU: Linear weights prepacked for oneDNN while generating (`pack_linears`).
        # Packed on the first call and kept: a judge calls generate once per prompt, and packing
        # a 135M model takes ~0.5 s.
        self.pack_weights = pack_weights
        self.trained = trained  # the weights that require grad change between calls: never packed
        self._swaps: list[Swap] | None = None
        self.tokenizer = tokenizer
        self.slots = max(1, batch_size)
        self.stop_ids = stop_ids or end_of_turn_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        # Waiting prompts are admitted once this share of the slots is free (or nothing is running),
        # so each prefill forward holds several prompts rather than one.
        self.admit_share = admit_share
        self.stats: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        stop_when: StopWhen | None = None,
    ) -> list[list[Completion]]:
        if not prompts:
            return []
        if self._swaps is None:
            self._swaps = pack_linears(self.model, self.slots, trained=self.trained) if self.pack_weights else []
        with swapped_in(self._swaps) as packed:
            results = self._generate(prompts, params, progress, stop_when)
        self.stats["packed_linears"] = packed
        return results

    def _generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        progress: ProgressCallback | None,
        stop_when: StopWhen | None,
    ) -> list[list[Completion]]:
        slots = max(self.slots, params.n)  # a prompt's n samples are admitted together
        started = time.perf_counter()
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        device = next(self.model.parameters()).device
        prefix = common_prefix_length(encoded)
        capacity = max(len(e) for e in encoded) + params.max_new_tokens + 1  # +1: a scratch position for pads
        window = getattr(self.model.config, "sliding_window", None)
        if window and capacity > window:  # the engine's mask is full causal attention
            raise ConfigError(
                f"sequences of up to {capacity} tokens exceed this model's sliding window ({window}); "
                "use generation.backend: hf"
            )
        slots = fitting_slots(self.model, slots, params.n, capacity, memory := {})
        cache = _SlotCache(self.model.config.num_hidden_layers, slots, capacity)
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        remaining = [params.n] * len(prompts)
        counters = {"prefill_tokens": 0, "decode_tokens": 0, "steps": 0, "rejected": 0, "generated": 0}

        if prefix:
            ids = torch.tensor([encoded[0][:prefix]], device=device)
            cache.plan(0, torch.arange(prefix, device=device)[None], prefix)
            self.model(
                input_ids=ids,
                position_ids=torch.arange(prefix, device=device)[None],
                cache=cache,
                attention_mask=self._causal_mask(torch.tensor([prefix]), prefix, 0, prefix, device),
                use_cache=True,
                logits_to_keep=1,
            )
            cache.broadcast_prefix(prefix)
            counters["prefill_tokens"] += prefix

        queue = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths prefill together
        live: list[_Row] = []  # live[k] is in slot k
        last_token = torch.empty(0, dtype=torch.long, device=device)
        finished_prompts = 0
        reported = 0  # generated tokens already reported to `progress`

        def finish(row: _Row, reason: str, rejected_by: str | None = None) -> None:
            nonlocal finished_prompts
            tokens = row.tokens
            stop = reason == "stop"
            kept = tokens[:-1] if stop else tokens
            results[row.prompt_index][row.sample_index] = Completion(
                prompt_index=row.prompt_index,
                sample_index=row.sample_index,
                text=self.tokenizer.decode(kept, skip_special_tokens=True),
                finish_reason=reason,
                prompt_tokens=len(encoded[row.prompt_index]),
                completion_tokens=len(tokens),
                seed=row.seed,
                rejected_by=rejected_by,
                token_ids=tuple(tokens),
            )
            remaining[row.prompt_index] -= 1
            if remaining[row.prompt_index] == 0:
                finished_prompts += 1

        while queue or live:
            free = slots - len(live)
            if queue and free >= params.n and (not live or free >= max(params.n, int(slots * self.admit_share))):
                count = min(free // params.n, len(queue))
                admitted, queue = queue[:count], queue[count:]
                new_rows, first = self._admit(admitted, encoded, texts, params, prefix, len(live), cache, device)
                counters["prefill_tokens"] += sum(len(encoded[i]) - prefix for i in admitted)
                live += new_rows
                last_token = torch.cat([last_token, first])
                for row, token in zip(new_rows, first.tolist()):
                    row.tokens.append(token)
                counters["generated"] += len(new_rows)
            else:
                # One decode step for every live row.
                lengths = torch.tensor([row.length for row in live], device=device)
                width = int(lengths.max()) + 1
                cache.plan(0, lengths[:, None], width)
                keep = self._decode_mask(lengths, width)
                logits = self.model(
                    input_ids=last_token[:, None],
                    position_ids=lengths[:, None],
                    cache=cache,
                    attention_mask=keep,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1]
                for row in live:
                    row.length += 1
                tokens = draw_tokens(logits, [row.generator for row in live], params)
                last_token = tokens
                counters["decode_tokens"] += len(live)
                counters["generated"] += len(live)
                counters["steps"] += 1
                for row, token in zip(live, tokens.tolist()):
                    row.tokens.append(token)
            # Rows that end here leave; the last live rows move into their slots. Rows are asked
            # in (prompt, sample) order, as the HF backend asks them: `stop_when` may count a
            # prompt's cut answers (EarlyRejection), so the order must not depend on the slots.
            ended: list[int] = []
            for k in sorted(range(len(live)), key=lambda k: (live[k].prompt_index, live[k].sample_index)):
                row = live[k]
                token = row.tokens[-1]
                if token in self.stop_ids:
                    finish(row, "stop")
                elif len(row.tokens) >= params.max_new_tokens:
                    finish(row, "length")
                elif stop_when is not None:
                    text = self.tokenizer.decode(row.tokens, skip_special_tokens=True).rstrip("\ufffd")
                    failed = stop_when(row.prompt_index, row.sample_index, text)
                    if failed is None:
                        continue
                    finish(row, "rejected", failed)
                    counters["rejected"] += 1
                else:
                    continue
                ended.append(k)
            if ended:
                live, last_token = self._compact(live, last_token, sorted(ended), cache)
            if progress and (ended or counters["steps"] % 16 == 0):
                progress(finished_prompts, counters["generated"] - reported)
                reported = counters["generated"]
        seconds = time.perf_counter() - started
        self.stats = {**counters, "shared_prefix": prefix, "seconds": round(seconds, 3), **memory}
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------------
    def _decode_mask(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """(rows, 1, 1, width) additive mask for one decode step: 0 on each row's cached positions
        and its new token, the dtype's minimum beyond. Additive rather than boolean: torch's CPU
        attention converts a boolean mask on every call of every layer, which took ~20% of
        attention's time at the demo's decode shapes; the attention output is the same."""
        dtype = next(self.model.parameters()).dtype
        beyond = torch.arange(width, device=lengths.device)[None] > lengths[:, None]
        mask = torch.zeros(beyond.shape, dtype=dtype, device=lengths.device)
        return mask.masked_fill_(beyond, torch.finfo(dtype).min)[:, None, None, :]

    def _causal_mask(self, lengths: torch.Tensor, q: int, prefix: int, width: int, device) -> torch.Tensor:
        """(rows, 1, q, width) mask for left-padded queries: row j's real tokens are its last
        `lengths[j] - prefix` query positions, at cache positions prefix .. lengths[j] - 1."""
        lengths = lengths.to(device)
        query = torch.arange(q, device=device)[None, :]  # (1, q)
        own = lengths[:, None] - prefix  # (rows, 1) real query tokens per row
        position = prefix + query - (q - own)  # (rows, q) cache position of each query token
        key = torch.arange(width, device=device)[None, None, :]  # (1, 1, width)
        visible = (key < prefix) | ((key >= prefix) & (key <= position[:, :, None]))
        return visible[:, None]

    def _prefill(
        self, admitted: list[int], encoded, prefix: int, first_slot: int, cache: _SlotCache, device
    ) -> torch.Tensor:
        """One forward over `admitted` prompts (less the shared prefix), left-padded, into slots
        first_slot..; returns each prompt's logits for its first answer token (prompts, vocab)."""
        lengths = torch.tensor([len(encoded[i]) for i in admitted])
        q = int(lengths.max()) - prefix
        ids = torch.full((len(admitted), q), self.pad_id, dtype=torch.long)
        positions = torch.full(
            (len(admitted), q), cache.capacity - 1, dtype=torch.long
        )  # pads write to a scratch position
        for j, i in enumerate(admitted):
            own = encoded[i][prefix:]
            ids[j, q - len(own) :] = torch.tensor(own)
            positions[j, q - len(own) :] = torch.arange(prefix, prefix + len(own))
        width = int(lengths.max())
        cache.plan(first_slot, positions.to(device), width)
        return self.model(
            input_ids=ids.to(device),
            position_ids=positions.to(device),
            cache=cache,
            attention_mask=self._causal_mask(lengths, q, prefix, width, device),
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]

    def _admit(
        self,
        admitted: list[int],
        encoded,
        texts,
        params: SamplingParams,
        prefix: int,
        first_slot: int,
        cache: _SlotCache,
        device,
    ) -> tuple[list[_Row], torch.Tensor]:
        """Prefill `admitted` prompts, copy each into its n sample slots, draw every row's first token.

        Prompt j sits in slot first_slot + j; its other samples take the slots after all the prompts."""
        logits = self._prefill(admitted, encoded, prefix, first_slot, cache, device)
        order = [(j, 0) for j in range(len(admitted))] + [
            (j, s) for j in range(len(admitted)) for s in range(1, params.n)
        ]
        sources = [first_slot + j for j, s in order if s > 0]
        targets = list(range(first_slot + len(admitted), first_slot + len(order)))
        cache.copy_slots(sources, targets, max(len(encoded[i]) for i in admitted))
        rows: list[_Row] = []
        for j, s in order:
            i = admitted[j]
            seed = None if params.greedy else row_seed(params.seed, texts[i], s)
            generator = None
            if seed is not None:
                generator = torch.Generator(device="cpu")
                generator.manual_seed(seed)
            rows.append(_Row(prompt_index=i, sample_index=s, length=len(encoded[i]), seed=seed, generator=generator))
        row_logits = logits[torch.tensor([j for j, _ in order], device=logits.device)]
        return rows, draw_tokens(row_logits, [row.generator for row in rows], params)

    def _compact(self, live: list[_Row], last_token: torch.Tensor, ended: list[int], cache: _SlotCache):
        """Drop the `ended` rows; the last surviving rows move into the freed slots."""
        gone = set(ended)
        keep = [k for k in range(len(live)) if k not in gone]
        survivors = len(keep)
        # Rows already inside [0, survivors) stay; those beyond move into the holes below it.
        holes = [k for k in ended if k < survivors]
        movers = [k for k in keep if k >= survivors]
        if movers:
            width = max(live[k].length for k in movers)
            cache.copy_slots(movers, holes, width)
        new_live = list(live)
        new_tokens = last_token.clone()
        for hole, mover in zip(holes, movers):
            new_live[hole] = live[mover]
            new_tokens[hole] = last_token[mover]
        return new_live[:survivors], new_tokens[:survivors]

    # ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def self_check(self, prompts: Sequence[Prompt]) -> float:
        """Largest gap, relative to the logits' scale, between this engine's logits and a plain
        forward's on `prompts`: at each prompt's last token (shared prefix + left-padded prefill)
        and at one decode step after it."""
        device = next(self.model.parameters()).device
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        prefix = common_prefix_length(encoded)
        cache = _SlotCache(self.model.config.num_hidden_layers, len(encoded), max(map(len, encoded)) + 3)
        if prefix:
            cache.plan(0, torch.arange(prefix, device=device)[None], prefix)
            self.model(
                input_ids=torch.tensor([encoded[0][:prefix]], device=device),
                position_ids=torch.arange(prefix, device=device)[None],
                cache=cache,
                use_cache=True,
                attention_mask=self._causal_mask(torch.tensor([prefix]), prefix, 0, prefix, device),
            )
            cache.broadcast_prefix(prefix)
        first = self._prefill(list(range(len(encoded))), encoded, prefix, 0, cache, device).float()
        nxt = first.argmax(-1)
        lengths = torch.tensor([len(ids) for ids in encoded], device=device)
        width = int(lengths.max()) + 1
        cache.plan(0, lengths[:, None], width)
        keep = self._decode_mask(lengths, width)
        second = (
            self.model(
                input_ids=nxt[:, None],
                position_ids=lengths[:, None],
                cache=cache,
                attention_mask=keep,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        gap = 0.0
        for j, ids in enumerate(encoded):
            plain = self.model(input_ids=torch.tensor([ids + [int(nxt[j])]], device=device)).logits[0, -2:].float()
            scale = plain.abs().max().clamp(min=1.0)
            gap = max(
                gap, float((plain[0] - first[j]).abs().max() / scale), float((plain[1] - second[j]).abs().max() / scale)
            )
        return gap


def engine_supports(engine: ContinuousGenerator, prompts: Sequence[Prompt]) -> str | None:
    """None when the engine reproduces a plain forward's logits for this model, else why not."""
    try:
        gap = engine.self_check(prompts)
    except Exception as exc:  # an architecture that does not take the engine's cache or mask
        return f"{type(exc).__name__}: {exc}"
    tolerance = engine_tolerance(next(engine.model.parameters()).dtype)
    if not gap <= tolerance:
        return f"its logits differ from a plain forward by {gap:.2g} (tolerance {tolerance})"
    return None
