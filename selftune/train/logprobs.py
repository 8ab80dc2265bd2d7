"""Log-probabilities of answers under a model: the engine DPO, evaluation and the benchmarks share.

Pairs are tokenized with the exact response masks of `selftune.train.masking`; a sequence's log-prob
is the sum over its response tokens and closing token. `sequence_logps` computes it for a batch
of chosen and rejected rows with every exact saving that a small model on a CPU needs (see its
docstring); `prompt_sharing_holds` checks, on the model at hand, that running each prompt once
for all its answers gives the same numbers as running every row whole.

Usage:
    from selftune.train.logprobs import PairCollator, sequence_logps, tokenize_pairs
    rows, dropped = tokenize_pairs(tokenizer, pairs, max_length=1024, response_separator=None,
                                   max_drop_share=0.05, source="pairs.jsonl")
    batch = PairCollator(tokenizer.pad_token_id)(rows[:4])
    logps, counts = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
"""

from __future__ import annotations

import inspect
import json
import logging

import torch
import torch.nn.functional as F

from selftune.errors import TooManyDroppedError
from selftune.train.masking import IGNORE_INDEX, MaskingError, tokenize_example

# transformers is imported where a model's forward signature is read (its model classes cost ~3 s).

logger = logging.getLogger("selftune.dpo")


def tokenize_pair(tokenizer, pair, *, max_length: int, response_separator: str | None) -> dict:
    prompt = [m.model_dump() for m in pair.prompt]
    chosen = tokenize_example(
        tokenizer,
        {"prompt": prompt, "completion": [m.model_dump() for m in pair.chosen]},
        max_length=max_length,
        response_separator=response_separator,
    )
    rejected = tokenize_example(
        tokenizer,
        {"prompt": prompt, "completion": [m.model_dump() for m in pair.rejected]},
        max_length=max_length,
        response_separator=response_separator,
    )
    return {
        "chosen_input_ids": chosen["input_ids"],
        "chosen_labels": chosen["labels"],
        "rejected_input_ids": rejected["input_ids"],
        "rejected_labels": rejected["labels"],
        "length": max(len(chosen["input_ids"]), len(rejected["input_ids"])),
        "negative_source": pair.negative_source,
    }


def tokenize_pairs(
    tokenizer, pairs, *, max_length, response_separator, max_drop_share, source
) -> tuple[list[dict], int]:
    """Masked rows of `pairs`; each row's `prompt_group` numbers its prompt (pairs of one prompt
    share it), which `PromptGroupedSampler` batches together."""
    rows, dropped = [], 0
    groups: dict[str, int] = {}
    for pair in pairs:
        try:
            row = tokenize_pair(tokenizer, pair, max_length=max_length, response_separator=response_separator)
        except MaskingError:
            dropped += 1
            continue
        row["prompt_group"] = groups.setdefault(json.dumps([m.model_dump() for m in pair.prompt]), len(groups))
        rows.append(row)
    if pairs and dropped / len(pairs) > max_drop_share:
        raise TooManyDroppedError(f"{source}: {dropped} of {len(pairs)} pairs could not be masked")
    return rows, dropped


class PairCollator:
    """Stacks chosen then rejected rows into one right-padded batch of 2B sequences."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        sequences = [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
        labels = [r["chosen_labels"] for r in rows] + [r["rejected_labels"] for r in rows]
        width = max(len(s) for s in sequences)
        batch = {
            "input_ids": torch.tensor([s + [self.pad_id] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
            "labels": torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels]),
        }
        if "ref_chosen_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor(
                [r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows]
            )
        if all("pair_index" in r for r in rows):  # held-out rows: an eval pass attributes margins to sources
            batch["pair_index"] = torch.tensor([r["pair_index"] for r in rows])
        return batch


def sequence_logps(
    model, input_ids, attention_mask, labels, *, max_padding: float = 0.15, share_prompts: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of response-token log-probs per sequence (2B,), and response-token counts (2B,).

    Savings, all exact (right padding and causal attention: a real token never sees a pad):
    - identical rows run once: a prompt's chosen answer is in each of its pairs, and the trainer
      batches a prompt's pairs together (`PromptGroupedSampler`);
    - with `share_prompts`, rows that start with the same prompt run it once and their answers
      continue from its KV cache (`_shared_prompt_logps`): prompts were ~42% of the demo's tokens;
    - rows run in length-sorted chunks, each cut to its own longest row, so padding wastes at most
      `max_padding` of a chunk's positions (one 2B batch padded to its longest row spent ~28% of its
      positions on pads in the demo);
    - the LM head runs only from the first position that predicts a response token on
      (`logits_to_keep`), not over the prompts: the (rows x positions x vocab) logits are the
      largest tensors of a small model's step.
    """
    lengths = attention_mask.sum(-1).tolist()
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(-1)
    representative: dict[tuple, int] = {}
    inverse = [
        representative.setdefault((tuple(input_ids[k, :n].tolist()), tuple(labels[k, :n].tolist())), k)
        for k, n in enumerate(lengths)
    ]
    rows = sorted(representative.values())
    out = torch.zeros(len(lengths), dtype=torch.float32, device=input_ids.device)
    trim_head = accepts_logits_to_keep(model)
    # Under gradient checkpointing a layer drops its KV cache while gradients are on (its backward
    # replay would write the cache twice), so the answers could not see the prompt: no sharing there.
    share_prompts = share_prompts and not (torch.is_grad_enabled() and _checkpointing(model))
    if share_prompts:
        has_label = (labels != IGNORE_INDEX).tolist()
        # A row's shared prefix is its prompt less the last token, whose logits predict the first answer token.
        prefix_len = {k: (has_label[k].index(True) if True in has_label[k] else lengths[k]) - 1 for k in rows}
        share_prompts = min(prefix_len.values()) >= 1  # every row has a prompt token to share
    if share_prompts:
        out = _shared_prompt_logps(
            model, input_ids, attention_mask, labels, rows, lengths, prefix_len, max_padding, trim_head, out
        )
    else:
        for chunk in _length_chunks([lengths[k] for k in rows], max_padding):
            index = torch.tensor([rows[i] for i in chunk], device=input_ids.device)
            width = max(lengths[k] for k in index.tolist())
            ids, mask, targets = input_ids[index, :width], attention_mask[index, :width], labels[index, 1:width]
            out = out.index_put((index,), _answer_logps(model, targets, trim_head, input_ids=ids, attention_mask=mask))
    return out[torch.tensor(inverse, device=out.device)], counts


def _answer_logps(model, targets: torch.Tensor, trim_head: bool, **inputs) -> torch.Tensor:
    """Summed log-probs of the non-ignored `targets` (n, width-1; token t+1 is predicted at position
    t) under one forward of `inputs`; the LM head runs from the first answered position on."""
    width = targets.shape[1] + 1
    answered = (targets != IGNORE_INDEX).any(0).nonzero()
    start = int(answered[0]) if len(answered) else width - 1
    if trim_head:
        logits = model(**inputs, logits_to_keep=width - start).logits[:, :-1]  # (n, width-1-start, V)
    else:
        logits = model(**inputs).logits[:, start:-1]
    targets = targets[:, start:]
    token_logps = -F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return (token_logps * (targets != IGNORE_INDEX)).sum(-1)


def _shared_prompt_logps(
    model, input_ids, attention_mask, labels, rows, lengths, prefix_len, max_padding, trim_head, out
):
    """`sequence_logps` of `rows`, each distinct prompt run once.

    A row's prefix (`prefix_len`) is its prompt less the last token, whose logits predict the first
    answer token, so it runs with the answer. Prefixes run in length chunks with a KV cache; each chunk's
    rows then run their continuations (length-chunked again) on a copy of the cache cut to their
    prefixes, at their true positions (pads inside the cache are masked). Gradients reach the
    prefix pass through the cache.
    """
    from transformers import DynamicCache

    device = input_ids.device
    groups: dict[tuple, list[int]] = {}
    for k in rows:
        groups.setdefault(tuple(input_ids[k, : prefix_len[k]].tolist()), []).append(k)
    prefixes = list(groups.values())  # rows per distinct prefix
    for prefix_chunk in _length_chunks([prefix_len[g[0]] for g in prefixes], max_padding):
        members = [prefixes[i] for i in prefix_chunk]
        width = max(prefix_len[g[0]] for g in members)
        index = torch.tensor([g[0] for g in members], device=device)
        ends = torch.tensor([prefix_len[g[0]] for g in members], device=device)
        prefix_mask = (torch.arange(width, device=device)[None] < ends[:, None]).long()  # (groups, width)
        cache = DynamicCache()
        model(
            input_ids=input_ids[index, :width] * prefix_mask,
            attention_mask=prefix_mask,
            cache=cache,
            use_cache=True,
            **({"logits_to_keep": 1} if trim_head else {}),
        )
        slot = {k: i for i, g in enumerate(members) for k in g}  # row -> its prefix's place in the cache
        chunk_rows = [k for g in members for k in g]
        tails = [lengths[k] - prefix_len[k] for k in chunk_rows]
        for tail_chunk in _length_chunks(tails, max_padding):
            ks = [chunk_rows[i] for i in tail_chunk]
            tail = max(tails[i] for i in tail_chunk)
            starts = torch.tensor([prefix_len[k] for k in ks], device=device)
            positions = starts[:, None] + torch.arange(tail, device=device)[None]  # (n, tail)
            rows_index = torch.tensor(ks, device=device)
            valid = positions < torch.tensor([lengths[k] for k in ks], device=device)[:, None]
            gather_at = positions.clamp(max=input_ids.shape[1] - 1)
            ids = torch.where(valid, input_ids[rows_index].gather(1, gather_at), 0)
            target_at = (positions + 1).clamp(max=input_ids.shape[1] - 1)
            targets = torch.where(valid[:, 1:], labels[rows_index].gather(1, target_at)[:, :-1], IGNORE_INDEX)
            select = torch.tensor([slot[k] for k in ks], device=device)
            rows_cache = DynamicCache()
            for layer_index, layer in enumerate(cache.layers):
                rows_cache.update(layer.keys[select], layer.values[select], layer_index)
            mask = torch.cat([prefix_mask[select], valid.long()], 1)
            out = out.index_put(
                (rows_index,),
                _answer_logps(
                    model,
                    targets,
                    trim_head,
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=rows_cache,
                ),
            )
    return out


# Nats per answer token. On SmolLM2-135M in fp32 the two paths differ by ~1e-6, and answer
# positions off by one differ by 0.015; above this, sharing is off (slower, never wrong).
SHARING_TOLERANCE = 2e-3


@torch.no_grad()
def prompt_sharing_mismatch(model, rows: list[dict], collator: PairCollator) -> float:
    """Largest gap (nats per answer token) between log-probs with and without prompt sharing on
    `rows`. Sharing leans on the model's KV cache, position ids and padding mask all behaving like
    a Llama's; an architecture that treats any of them differently shows up here, before training."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batch = {k: v.to(device) for k, v in collator(rows).items() if k in ("input_ids", "attention_mask", "labels")}
    plain, counts = sequence_logps(model, **batch)
    shared, _ = sequence_logps(model, **batch, share_prompts=True)
    model.train(was_training)
    return float(((plain - shared).abs() / counts.clamp(min=1)).max())


def prompt_sharing_holds(model, rows: list[dict], collator: PairCollator) -> bool:
    """Whether prompt sharing gives this model's log-probs on the first 4 of `rows` within
    `SHARING_TOLERANCE`; warns when it does not."""
    gap = prompt_sharing_mismatch(model, rows[:4], collator)
    if gap > SHARING_TOLERANCE:
        logger.warning(
            "dpo: prompt sharing changes this model's log-probs by up to %.3g nats per answer "
            "token on 4 pairs (tolerance %g); every sequence runs whole instead",
            gap,
            SHARING_TOLERANCE,
        )
    return gap <= SHARING_TOLERANCE


def _length_chunks(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Row indices grouped by length (shortest first) so each group's padding stays within
    `max_padding` of its positions."""
    chunks: list[list[int]] = []
    current: list[int] = []
    real = 0
    for k in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if current and (len(current) + 1) * lengths[k] > (1 + max_padding) * (real + lengths[k]):
            chunks.append(current)
            current, real = [], 0
        current.append(k)
        real += lengths[k]
    return chunks + [current] if current else chunks


def _checkpointing(model) -> bool:
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def accepts_logits_to_keep(model) -> bool:

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters
