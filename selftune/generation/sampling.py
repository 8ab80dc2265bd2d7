"""Sampling shared by every engine: one seed per answer (stable under any batching), prompt
rendering, and the per-row inverse-CDF sampler with exact top-p.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from selftune.generation.types import Prompt, SamplingParams


def row_seed(seed: int, prompt_text: str, sample_index: int) -> int:
    """A 63-bit seed for one answer, stable under any reordering or batching of prompts."""
    digest = hashlib.sha256(f"{seed}\x00{sample_index}\x00{prompt_text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def render_prompt(tokenizer, prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template: pass raw-text prompts (strings) instead of messages")
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    text = render_prompt(tokenizer, prompt)
    # A rendered chat template already holds its special tokens (BOS included where the template
    # writes one); raw text gets the tokenizer's usual specials.
    return tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]


# The top-p nucleus is looked for among each row's top tokens, in stages of this many (partial
# sorts); rows whose nucleus outgrows the last stage fall back to a full sort. Exact either way.
NUCLEUS_STAGES = (64, 512)


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top-p nucleus: (ids, sizes), ids (rows, width) in ascending token-id order,
    padded with the vocabulary size, and sizes (rows,) the nucleus sizes. A token is in the nucleus
    while the mass of the tokens above it is below top_p (the top token always is), and so is every
    token as likely as the least likely one kept (ties)."""
    rows, vocab = probs.shape
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (row numbers, ids, sizes)
    todo = torch.arange(rows, device=probs.device)
    for k in (*[k for k in NUCLEUS_STAGES if k < vocab], vocab):
        if k < vocab:
            values, ids = probs[todo].topk(k, dim=-1)  # descending
        else:
            values = probs[todo].sort(dim=-1, descending=True).values
        sizes = ((values.double().cumsum(dim=-1) - values.double()) < top_p).sum(dim=-1, keepdim=True)
        floor = values.gather(1, sizes - 1)
        sizes = (values >= floor).sum(dim=-1)  # with the tokens that tie the least likely kept one
        if k == vocab:
            # A nucleus beyond the shortlists (a flat distribution: a random model, a high
            # temperature) can hold most of the vocabulary: its ids in token-id order come from a
            # mask of the kept tokens, each scattered to its rank among them, not from sorting the
            # kept ids a second time (that sort was half of this path's cost).
            kept = probs[todo] >= floor
            width = int(sizes.max())
            rank = (kept.long().cumsum(dim=-1) - 1).masked_fill_(~kept, width)  # dropped: a spare column
            chosen = torch.full((len(todo), width + 1), vocab, dtype=torch.long, device=probs.device)
            chosen.scatter_(1, rank, torch.arange(vocab, device=probs.device).expand(len(todo), -1))
            found.append((todo, chosen[:, :width], sizes))
            break
        # Complete when the shortlist holds a token below that one: every token outside it is less
        # likely still.
        inside = sizes < k
        if inside.any():
            width = int(sizes[inside].max())
            beyond = torch.arange(width, device=probs.device)[None] >= sizes[inside, None]
            chosen = ids[inside, :width].masked_fill(beyond, vocab).sort(dim=-1).values
            found.append((todo[inside], chosen, sizes[inside]))
        todo = todo[~inside]
        if not len(todo):
            break
    width = max(chosen.shape[1] for _, chosen, _ in found)
    ids = torch.full((rows, width), vocab, dtype=torch.long, device=probs.device)
    sizes = torch.empty(rows, dtype=torch.long, device=probs.device)
    for where, chosen, size in found:
        ids[where, : chosen.shape[1]] = chosen
        sizes[where] = size
    return ids, sizes


def draw_tokens(
    logits: torch.Tensor, generators: Sequence[torch.Generator | None], params: SamplingParams
) -> torch.Tensor:
    """Next token per row (rows,): argmax when greedy; otherwise inverse-CDF sampling from the
    temperature-scaled, top-p-truncated distribution with one uniform number from each row's own
    generator, so a row's draw never depends on its batch neighbours.

    The CDF runs over the kept tokens in token-id order, not in probability order: another batch
    shape changes logits in their last bits, which can reorder near-equal probabilities and, in a
    sorted CDF, move every later token; in id order it only moves each boundary by that rounding.
    With top_p < 1 the CDF covers the nucleus only (`_nucleus`), not the whole vocabulary: the
    same sums, since the tokens left out add nothing, at a fraction of the cost (the sampler was
    ~6% of a decode step on the demo's workload).
    """
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = (logits.float() / params.temperature).softmax(dim=-1)  # (rows, vocab)
    uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(probs.device)
    if params.top_p >= 1.0:
        cumulative = probs.double().cumsum(dim=-1)  # (rows, vocab), token-id order
        targets = (uniforms * cumulative[:, -1]).unsqueeze(1)
        return torch.searchsorted(cumulative, targets, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)
    ids, sizes = _nucleus(probs, params.top_p)
    vocab = probs.shape[-1]
    weights = probs.gather(1, ids.clamp(max=vocab - 1)).double().masked_fill_(ids == vocab, 0.0)
    cumulative = weights.cumsum(dim=-1)  # (rows, width): the nucleus in token-id order, zeros after
    targets = (uniforms * cumulative[:, -1]).unsqueeze(1)
    position = torch.searchsorted(cumulative, targets, right=True).squeeze(1)
    position = torch.minimum(position, sizes - 1)  # u * total rounding up to total: the last kept token
    return ids.gather(1, position[:, None]).squeeze(1)


class RowSampler:
    """Logits processor that turns `generate`'s greedy decoding into per-row seeded sampling: it
    draws each row's token with `draw_tokens` and returns logits that are 0 there and -inf
    elsewhere, which generate()'s argmax then picks."""

    def __init__(self, seeds: list[int], params: SamplingParams):
        self.generators = []
        for seed in seeds:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
            self.generators.append(generator)
        self.params = params

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = draw_tokens(scores, self.generators, self.params)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), tokens] = 0.0
        return out
