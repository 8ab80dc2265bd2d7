"""Stage `dpo`: a fresh LoRA on the merged SFT model, trained on preference pairs.

The reference model is the merged SFT model itself with the DPO adapter disabled (under
`no_grad`), never a second copy of the weights. Reference log-probs are computed once before
training by default (`dpo.precompute_ref_log_probs`), so each step runs one forward/backward of
the policy on chosen and rejected together.

Pairs are tokenized with the same exact masking as SFT (`selftune.masking`): a sequence's
log-prob is the sum over its response tokens and closing token. Losses (`dpo.loss_type`), with
    h = (log pi(c) - log pi(r)) - (log ref(c) - log ref(r)):
    sigmoid   -log sigmoid(beta * h)                               (DPO, Rafailov et al. 2023)
    hinge     max(0, 1 - beta * h)                                 (SLiC)
    ipo       (h_avg - 1 / (2 beta))^2, h from per-token averages  (IPO, Azar et al. 2023)
    rpo       sigmoid + rpo_alpha * mean NLL of the chosen answer  (RPO, Pang et al. 2024)

Why not TRL's DPOTrainer: it re-tokenizes pairs with its own prompt/answer split (which is the
prompt-prefix assumption our masking exists to avoid) and by default runs the reference forward
every step with gradient checkpointing on; a small Trainer subclass on our masked rows is exact
and faster (bench/dpo.py measures it against DPOTrainer).

Logged: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen,
logps/rejected, chosen log-prob shift per token. Warnings: chosen log-prob falling well below its
start (likelihood displacement) and mean answer length drifting from the SFT model's.

Usage:
    selftune dpo --run runs/demo
    from selftune.dpo import dpo_stage, dpo_loss
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from selftune.masking import IGNORE_INDEX, MaskingError, tokenize_example
from selftune.records import read_records

logger = logging.getLogger("selftune.dpo")


def tokenize_pair(tokenizer, pair, *, max_length: int, response_separator: str | None) -> dict:
    prompt = [m.model_dump() for m in pair.prompt]
    chosen = tokenize_example(tokenizer, {"prompt": prompt, "completion": [m.model_dump() for m in pair.chosen]},
                              max_length=max_length, response_separator=response_separator)
    rejected = tokenize_example(tokenizer, {"prompt": prompt, "completion": [m.model_dump() for m in pair.rejected]},
                                max_length=max_length, response_separator=response_separator)
    return {
        "chosen_input_ids": chosen["input_ids"], "chosen_labels": chosen["labels"],
        "rejected_input_ids": rejected["input_ids"], "rejected_labels": rejected["labels"],
        "length": max(len(chosen["input_ids"]), len(rejected["input_ids"])),
        "negative_source": pair.negative_source,
    }


def tokenize_pairs(tokenizer, pairs, *, max_length, response_separator, max_drop_share, source) -> tuple[list[dict], int]:
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
        from selftune.sft import TooManyDroppedError

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
            "labels": torch.tensor([l + [IGNORE_INDEX] * (width - len(l)) for l in labels]),
        }
        if "ref_chosen_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows])
        if all("pair_index" in r for r in rows):  # held-out rows: an eval pass attributes margins to sources
            batch["pair_index"] = torch.tensor([r["pair_index"] for r in rows])
        return batch


class PromptGroupedSampler(torch.utils.data.Sampler):
    """Training order: each epoch the prompts in a fresh random order, each prompt's pairs next to
    each other (also shuffled), so a batch holds whole prompts as far as its size allows and
    `sequence_logps` runs a prompt, and its chosen answer, once for all of its pairs (the demo has
    ~2 pairs per prompt). Seeded by (seed, epoch), so a resumed run replays the same order.

    Trainer's own samplers shuffle single rows or group by length; none keeps a prompt's rows together.
    """

    def __init__(self, groups: list[int], seed: int):
        self.groups, self.seed, self.epoch = list(groups), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        import random

        rng = random.Random(f"{self.seed}-{self.epoch}")
        members: dict[int, list[int]] = defaultdict(list)
        for index, group in enumerate(self.groups):
            members[group].append(index)
        order = list(members.values())
        rng.shuffle(order)
        for rows in order:
            rng.shuffle(rows)
            yield from rows


def sequence_logps(model, input_ids, attention_mask, labels, *, max_padding: float = 0.15,
                   share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
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
    inverse = [representative.setdefault((tuple(input_ids[k, :n].tolist()), tuple(labels[k, :n].tolist())), k)
               for k, n in enumerate(lengths)]
    rows = sorted(representative.values())
    out = torch.zeros(len(lengths), dtype=torch.float32, device=input_ids.device)
    trim_head = _accepts_logits_to_keep(model)
    # Under gradient checkpointing a layer drops its KV cache while gradients are on (its backward
    # replay would write the cache twice), so the answers could not see the prompt: no sharing there.
    share_prompts = share_prompts and not (torch.is_grad_enabled() and _checkpointing(model))
    if share_prompts:
        has_label = (labels != IGNORE_INDEX).tolist()
        # A row's shared prefix is its prompt less the last token, whose logits predict the first answer token.
        prefix_len = {k: (has_label[k].index(True) if True in has_label[k] else lengths[k]) - 1 for k in rows}
        share_prompts = min(prefix_len.values()) >= 1  # every row has a prompt token to share
    if share_prompts:
        out = _shared_prompt_logps(model, input_ids, attention_mask, labels, rows, lengths, prefix_len, max_padding,
                                   trim_head, out)
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


def _shared_prompt_logps(model, input_ids, attention_mask, labels, rows, lengths, prefix_len, max_padding, trim_head, out):
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
        model(input_ids=input_ids[index, :width] * prefix_mask, attention_mask=prefix_mask, cache=cache, use_cache=True,
              **({"logits_to_keep": 1} if trim_head else {}))
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
            out = out.index_put((rows_index,), _answer_logps(model, targets, trim_head, input_ids=ids, attention_mask=mask,
                                                             position_ids=positions, cache=rows_cache))
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
        logger.warning("dpo: prompt sharing changes this model's log-probs by up to %.3g nats per answer "
                       "token on 4 pairs (tolerance %g); every sequence runs whole instead", gap, SHARING_TOLERANCE)
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


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor, *, beta: float,
             loss_type: str, rpo_alpha: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses and metrics; tensors hold chosen rows first, then rejected rows (2B,)."""
    half = policy.shape[0] // 2
    pi_c, pi_r, ref_c, ref_r = policy[:half], policy[half:], reference[:half], reference[half:]
    n_c, n_r = counts[:half].clamp(min=1), counts[half:].clamp(min=1)
    h = (pi_c - pi_r) - (ref_c - ref_r)
    if loss_type in ("sigmoid", "rpo"):
        losses = -F.logsigmoid(beta * h)
        if loss_type == "rpo":
            losses = losses + rpo_alpha * (-pi_c / n_c)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        h_avg = (pi_c / n_c - pi_r / n_r) - (ref_c / n_c - ref_r / n_r)
        losses = (h_avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    chosen_reward, rejected_reward = beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()
    metrics = {
        "rewards/chosen": chosen_reward, "rewards/rejected": rejected_reward,
        "rewards/margins": chosen_reward - rejected_reward,
        "rewards/accuracies": (chosen_reward > rejected_reward).float(),
        "logps/chosen": pi_c.detach(), "logps/rejected": pi_r.detach(),
        "logps/chosen_shift_per_token": ((pi_c - ref_c) / n_c).detach(),
    }
    return losses, metrics


@torch.no_grad()
def reference_logps(model, rows: list[dict], collator: PairCollator, batch_size: int, bf16: bool, *,
                    share_prompts: bool = False) -> None:
    """Add ref_chosen_logps / ref_rejected_logps to each row (of one `tokenize_pairs` call), adapter
    disabled, one pass."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # A prompt's pairs side by side (its prompt and chosen answer run once per batch), prompts by
    # length (less padding per batch).
    longest: dict[int, int] = defaultdict(int)
    for row in rows:
        longest[row["prompt_group"]] = max(longest[row["prompt_group"]], row["length"])
    order = sorted(range(len(rows)), key=lambda k: (longest[rows[k]["prompt_group"]], rows[k]["prompt_group"]))
    with model.disable_adapter(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(order), batch_size):
            chunk = [rows[k] for k in order[start : start + batch_size]]
            batch = collator(chunk)
            logps, _ = sequence_logps(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                      batch["labels"].to(device), share_prompts=share_prompts)
            for k, row in enumerate(chunk):
                row["ref_chosen_logps"] = logps[k].item()
                row["ref_rejected_logps"] = logps[len(chunk) + k].item()
    model.train(was_training)


def reward_stats_by_source(margins: dict[int, float], rows: list[dict]) -> dict[str, dict[str, float]]:
    """Held-out implicit reward accuracy and mean margin, overall and per negative source, from the
    margins an eval pass recorded per row (`pair_index` -> beta x log-ratio difference)."""
    by_source: dict[str, list[float]] = defaultdict(list)
    for index, margin in sorted(margins.items()):
        by_source[rows[index]["negative_source"]].append(margin)
        by_source["all"].append(margin)
    return {source: {"pairs": len(values), "accuracy": round(sum(v > 0 for v in values) / len(values), 4),
                     "margin": round(sum(values) / len(values), 4)}
            for source, values in sorted(by_source.items())}


def make_dpo_trainer_class():
    from selftune.sft import make_trainer_class

    class PairTrainer(make_trainer_class()):
        """Trainer computing a DPO-family loss on stacked chosen/rejected batches."""

        def __init__(self, *args, beta: float, loss_type: str, rpo_alpha: float, displacement_warn: float,
                     share_prompts: bool = False, **kwargs):
            super().__init__(*args, **kwargs)
            self.beta, self.loss_type, self.rpo_alpha = beta, loss_type, rpo_alpha
            self.share_prompts = share_prompts
            self.displacement_warn = displacement_warn
            self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: let Trainer scale it
            self.stash: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
            self.eval_margins: dict[int, float] = {}  # pair_index -> margin, from the last evaluate()
            self.warnings: list[str] = []

        def evaluate(self, *args, **kwargs):
            self.eval_margins = {}
            return super().evaluate(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if "prompt_group" in getattr(dataset, "column_names", ()):
                return PromptGroupedSampler(dataset["prompt_group"], self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tensors = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            policy, counts = sequence_logps(model, *tensors, share_prompts=self.share_prompts)
            if "ref_logps" in inputs:
                reference = inputs["ref_logps"].to(policy.dtype)
            else:
                with torch.no_grad(), model.disable_adapter():
                    reference, _ = sequence_logps(model, *tensors, share_prompts=self.share_prompts)
            losses, metrics = dpo_loss(policy, reference, counts, beta=self.beta, loss_type=self.loss_type,
                                       rpo_alpha=self.rpo_alpha)
            split = "train" if model.training else "eval"
            for name, values in metrics.items():
                self.stash[split][name].extend(values.float().cpu().tolist())
            if split == "eval" and "pair_index" in inputs:
                margins = metrics["rewards/margins"].float().cpu().tolist()
                self.eval_margins.update(zip(inputs["pair_index"].tolist(), margins))
            loss = losses.mean()
            return (loss, None) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.autocast_smart_context_manager():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

        def log(self, logs, start_time=None):
            split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
            prefix = "eval_" if split == "eval" else ""
            for name, values in self.stash[split].items():
                if values:
                    logs[prefix + name] = sum(values) / len(values)
            self.stash[split] = defaultdict(list)
            shift = logs.get(prefix + "logps/chosen_shift_per_token")
            if split == "train" and shift is not None and shift < -self.displacement_warn and not self.warnings:
                message = (f"likelihood displacement: the chosen answers' log-prob fell {-shift:.2f} nats per token "
                           f"below its start at step {self.state.global_step}; consider a lower LR, a higher beta "
                           "or loss_type rpo")
                logger.warning(message)
                self.warnings.append(message)
            super().log(logs, start_time)

    return PairTrainer


def mean_answer_length(generator, prompts, max_new_tokens: int) -> float:
    from selftune.generation import SamplingParams

    answers = generator.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens))
    return sum(a[0].completion_tokens for a in answers) / max(1, len(answers))


def dpo_stage(run, cfg, *, round_number: int = 1, pairs_path: Path | None = None, eval_pairs_path: Path | None = None,
              sft_model: str | None = None, progress=None) -> Path:
    """Train the DPO adapter on the merged SFT model and merge it; returns the merged DPO model dir."""
    from peft import get_peft_model
    from transformers import set_seed

    from selftune.generation import make_generator
    from selftune.merge import merge_adapter
    from selftune.models import default_device, load_model, load_tokenizer, unload
    from selftune.sft import (_as_dataset, log_history, lora_config, prepare_checkpoints, tracker_callbacks,
                              training_arguments)

    pairs_path = Path(pairs_path) if pairs_path else run.output_of("pairs", "pairs", round_number=round_number)
    if eval_pairs_path is None:
        eval_pairs_path = run.optional_output("pairs", "eval_pairs", round_number=round_number)
    sft_model = sft_model or str(run.output_of("sft", "merged", round_number=round_number))
    pairs = read_records(pairs_path, "pairs")  # validate before loading anything
    eval_pairs = read_records(eval_pairs_path, "pairs") if eval_pairs_path else []
    inputs = {"pairs": pairs_path, "sft_model": Path(sft_model)}
    if eval_pairs_path:
        inputs["eval_pairs"] = Path(eval_pairs_path)
    stage_config = {"dpo": cfg.dpo.model_dump(), "dtype": cfg.model.dtype, "load_in_4bit": cfg.model.load_in_4bit}
    if run.up_to_date("dpo", config=stage_config, inputs=inputs, round_number=round_number):
        return run.output_of("dpo", "merged", round_number=round_number)
    with run.stage("dpo", config=stage_config, inputs=inputs, round_number=round_number) as stage:
        out = stage.dir
        device = default_device()
        tokenizer = load_tokenizer(sft_model)
        separator = None if getattr(tokenizer, "chat_template", None) else cfg.sft.response_separator
        rows, dropped = tokenize_pairs(tokenizer, pairs, max_length=cfg.dpo.max_length, response_separator=separator,
                                       max_drop_share=cfg.sft.max_drop_share, source=str(pairs_path))
        eval_rows, _ = tokenize_pairs(tokenizer, eval_pairs, max_length=cfg.dpo.max_length, response_separator=separator,
                                      max_drop_share=1.0, source=str(eval_pairs_path))
        for index, row in enumerate(eval_rows):
            row["pair_index"] = index
        resuming = prepare_checkpoints(out, stage.fingerprint, stage="dpo")
        model = load_model(sft_model, dtype="float32" if not cfg.model.load_in_4bit else "bfloat16", device=device,
                           load_in_4bit=cfg.model.load_in_4bit)
        if cfg.model.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.dpo.gradient_checkpointing)
        set_seed(cfg.dpo.seed)  # the fresh adapter's init must not depend on what ran before
        model = get_peft_model(model, lora_config(cfg.dpo.lora))
        args = training_arguments(cfg.dpo, out, has_eval=bool(eval_rows), device=device)
        collator = PairCollator(tokenizer.pad_token_id)
        share = cfg.dpo.share_prompts and prompt_sharing_holds(model, rows, collator)
        stage.metrics["share_prompts"] = share
        if cfg.dpo.precompute_ref_log_probs:
            started = time.perf_counter()
            for part in (rows, eval_rows):  # each numbers its own prompt groups
                reference_logps(model, part, collator, cfg.dpo.per_device_batch_size * 2, args.bf16, share_prompts=share)
            stage.metrics["reference_seconds"] = round(time.perf_counter() - started, 1)
        trainer = make_dpo_trainer_class()(
            model=model, args=args, train_dataset=_as_dataset(rows), eval_dataset=_as_dataset(eval_rows) if eval_rows else None,
            data_collator=collator, processing_class=tokenizer,
            callbacks=tracker_callbacks(cfg.dpo, out) + ([progress] if progress else []),
            beta=cfg.dpo.beta, loss_type=cfg.dpo.loss_type, rpo_alpha=cfg.dpo.rpo_alpha,
            displacement_warn=cfg.dpo.displacement_warn_nats, share_prompts=share,
        )
        # At the start the fresh adapter adds exactly zero (LoRA B starts at 0), so the policy equals
        # its reference and every held-out margin is 0: known without an evaluation pass.
        before = {"eval_rewards/accuracies": 0.0, "eval_rewards/margins": 0.0} if eval_rows else {}
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=True if resuming else None)
        seconds = time.perf_counter() - started
        after = trainer.evaluate() if eval_rows else {}
        if eval_rows:  # from the same pass as `after`
            stage.metrics["held_out_by_source"] = reward_stats_by_source(trainer.eval_margins, eval_rows)
        warnings = list(trainer.warnings)
        generator = None
        length_prompts = [[m.model_dump() for m in p.prompt] for p in (eval_pairs or pairs)[: cfg.dpo.length_check_prompts]]
        if length_prompts:
            model.eval()
            generator = make_generator(model, tokenizer, backend=cfg.generation.backend,
                                       batch_size=cfg.generation.batch_size)
            with model.disable_adapter():
                sft_length = mean_answer_length(generator, length_prompts, cfg.generation.max_new_tokens)
            dpo_length = mean_answer_length(generator, length_prompts, cfg.generation.max_new_tokens)
            ratio = dpo_length / max(sft_length, 1e-9)
            stage.metrics.update(length_sft=round(sft_length, 1), length_dpo=round(dpo_length, 1))
            if not 1 / cfg.dpo.length_drift_warn <= ratio <= cfg.dpo.length_drift_warn:
                message = (f"mean answer length drifted from {sft_length:.0f} (SFT) to {dpo_length:.0f} tokens (DPO) "
                           f"on {len(length_prompts)} held-out prompts")
                logger.warning(message)
                warnings.append(message)
        adapter_dir = out / "adapter"
        shutil.rmtree(adapter_dir, ignore_errors=True)
        model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        (out / "log_history.json").write_text(json.dumps(log_history(trainer), indent=1))
        tokens = sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows) * cfg.dpo.epochs
        stage.add_output("adapter", adapter_dir)
        stage.metrics.update(
            pairs=len(pairs), dropped=dropped, eval_pairs=len(eval_rows), steps=result.global_step, resumed=resuming,
            train_seconds=round(seconds, 1), tokens_per_second=round(tokens / seconds, 1) if not resuming else None,
            train_loss=result.training_loss if math.isfinite(result.training_loss) else None,
            eval_before={k: v for k, v in before.items() if k.startswith("eval_")},
            eval_after={k: v for k, v in after.items() if k.startswith("eval_")},
            warnings=warnings, bf16=args.bf16,
        )
        del trainer, generator
        unload(model)
        merged = merge_adapter(sft_model, adapter_dir, out / "merged")
        stage.add_output("merged", merged.path)
        stage.metrics["merge_max_logit_diff"] = merged.max_logit_diff
    return merged.path
