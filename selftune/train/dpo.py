"""DPO training: a fresh LoRA on the merged SFT model, trained on preference pairs.

The reference model is the merged SFT model itself with the DPO adapter disabled (under
`no_grad`), never a second copy of the weights. Reference log-probs are computed once before
training by default (`dpo.precompute_ref_log_probs`), so each step runs one forward/backward of
the policy on chosen and rejected together. `dpo.reference: start | base` measures against
another model instead (the one this round's SFT trained from, or the run's base): it is loaded
alone for that one pass and unloaded before the policy loads.

Pairs are tokenized with the same exact masking as SFT (`selftune.train.masking`): a sequence's
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
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel, gather_object

from selftune.config import PipelineConfig
from selftune.generation.local import make_generator
from selftune.generation.types import SamplingParams
from selftune.models import load_tokenizer, unload
from selftune.train.jobs import DPOJob
from selftune.train.logprobs import PairCollator, prompt_sharing_holds, sequence_logps
from selftune.train.toolkit import (
    as_dataset,
    evaluation_seconds,
    final_evaluation,
    initial_evaluation,
    launch_facts,
    launch_state,
    log_history,
    lora_model,
    recorded_train_loss,
    save_adapter,
    tracker_callbacks,
    training_arguments,
    training_weights,
)
from selftune.train.trainer import GuardedTrainer

logger = logging.getLogger("selftune.dpo")


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
        rng = random.Random(f"{self.seed}-{self.epoch}")
        members: dict[int, list[int]] = defaultdict(list)
        for index, group in enumerate(self.groups):
            members[group].append(index)
        order = list(members.values())
        rng.shuffle(order)
        for rows in order:
            rng.shuffle(rows)
            yield from rows


def dpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    counts: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
    rpo_alpha: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
        "rewards/chosen": chosen_reward,
        "rewards/rejected": rejected_reward,
        "rewards/margins": chosen_reward - rejected_reward,
        "rewards/accuracies": (chosen_reward > rejected_reward).float(),
        "logps/chosen": pi_c.detach(),
        "logps/rejected": pi_r.detach(),
        "logps/chosen_shift_per_token": ((pi_c - ref_c) / n_c).detach(),
    }
    return losses, metrics


@torch.no_grad()
def reference_logps(
    model,
    rows: list[dict],
    collator: PairCollator,
    batch_size: int,
    bf16: bool,
    *,
    share_prompts: bool = False,
    adapter_off: bool = True,
    progress=None,
) -> None:
    """Add ref_chosen_logps / ref_rejected_logps to each row (of one `tokenize_pairs` call), one
    pass, the adapter disabled (`adapter_off`; a reference without one runs as it is);
    `progress(pairs done, pairs)` after each batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # A prompt's pairs side by side (its prompt and chosen answer run once per batch), prompts by
    # length (less padding per batch).
    longest: dict[int, int] = defaultdict(int)
    for row in rows:
        longest[row["prompt_group"]] = max(longest[row["prompt_group"]], row["length"])
    order = sorted(range(len(rows)), key=lambda k: (longest[rows[k]["prompt_group"]], rows[k]["prompt_group"]))
    adapter = model.disable_adapter() if adapter_off else contextlib.nullcontext()
    with adapter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(order), batch_size):
            chunk = [rows[k] for k in order[start : start + batch_size]]
            batch = collator(chunk)
            logps, _ = sequence_logps(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["labels"].to(device),
                share_prompts=share_prompts,
            )
            for k, row in enumerate(chunk):
                row["ref_chosen_logps"] = logps[k].item()
                row["ref_rejected_logps"] = logps[len(chunk) + k].item()
            if progress:
                progress(start + len(chunk), len(rows))
    model.train(was_training)


def reward_stats_by_source(margins: dict[int, float], rows: list[dict]) -> dict[str, dict[str, float]]:
    """Held-out implicit reward accuracy and mean margin, overall and per negative source, from the
    margins an eval pass recorded per row (`pair_index` -> beta x log-ratio difference)."""
    by_source: dict[str, list[float]] = defaultdict(list)
    for index, margin in sorted(margins.items()):
        by_source[rows[index]["negative_source"]].append(margin)
        by_source["all"].append(margin)
    return {
        source: {
            "pairs": len(values),
            "accuracy": round(sum(v > 0 for v in values) / len(values), 4),
            "margin": round(sum(values) / len(values), 4),
        }
        for source, values in sorted(by_source.items())
    }


class PairTrainer(GuardedTrainer):
    """Trainer computing a DPO-family loss on stacked chosen/rejected batches."""

    def __init__(
        self,
        *args,
        beta: float,
        loss_type: str,
        rpo_alpha: float,
        displacement_warn: float,
        share_prompts: bool = False,
        **kwargs,
    ):
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
        self.gather_margins = True  # collected across processes at the evaluation's log
        return super().evaluate(*args, **kwargs)

    def _everyone(self, split: str) -> None:
        """Under several processes, each saw its share of the batches: collect every process's
        stashed metrics (and the held-out margins) so the logged numbers cover all pairs."""
        if self.accelerator.num_processes == 1:
            return

        merged: dict[str, list[float]] = defaultdict(list)
        for stash in gather_object([dict(self.stash[split])]):
            for name, values in stash.items():
                merged[name].extend(values)
        self.stash[split] = merged
        if split == "eval" and getattr(self, "gather_margins", False):
            self.eval_margins = dict(gather_object(list(self.eval_margins.items())))
            self.gather_margins = False

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if "prompt_group" in getattr(dataset, "column_names", ()):
            return PromptGroupedSampler(dataset["prompt_group"], self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        tensors = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        # Under several processes every process must run the same number of forward passes per
        # step (DDP synchronizes at each one), so a batch runs in one pass: no shared prompts and
        # no length chunks, whose pass counts depend on the process's own rows.
        one_pass = self.accelerator.num_processes > 1
        options = {"share_prompts": self.share_prompts and not one_pass}
        if one_pass:
            options["max_padding"] = math.inf
        policy, counts = sequence_logps(model, *tensors, **options)
        if "ref_logps" in inputs:
            reference = inputs["ref_logps"].to(policy.dtype)
        else:
            with torch.no_grad(), model.disable_adapter():
                reference, _ = sequence_logps(model, *tensors, **options)
        losses, metrics = dpo_loss(
            policy, reference, counts, beta=self.beta, loss_type=self.loss_type, rpo_alpha=self.rpo_alpha
        )
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
        self._everyone(split)
        for name, values in self.stash[split].items():
            if values:
                logs[prefix + name] = sum(values) / len(values)
        self.stash[split] = defaultdict(list)
        shift = logs.get(prefix + "logps/chosen_shift_per_token")
        if split == "train" and shift is not None and shift < -self.displacement_warn and not self.warnings:
            message = (
                f"likelihood displacement: the chosen answers' log-prob fell {-shift:.2f} nats per token "
                f"below its start at step {self.state.global_step}; consider a lower LR, a higher beta "
                "or loss_type rpo"
            )
            logger.warning(message)
            self.warnings.append(message)
        super().log(logs, start_time)


def mean_answer_length(generator, prompts, max_new_tokens: int) -> float:

    answers = generator.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens))
    return sum(a[0].completion_tokens for a in answers) / max(1, len(answers))


def train_dpo(cfg: PipelineConfig, out: Path, job: DPOJob, *, progress=None, phase_progress=None) -> dict:
    """Train the fresh DPO adapter on `job`'s pairs against its reference (the adapter-disabled
    model, or `job.reference_model`); in this process or in each `accelerate launch` process. The
    reference log-probs are computed once, by the main process, and shared; the main process
    writes the adapter and the log history, and checks the answer length drift. Returns the
    training metrics."""

    sft_model, rows, eval_rows, resuming = job.sft_model, job.rows, job.eval_rows, job.resuming
    state, device = launch_state()
    metrics: dict = {}
    tokenizer = load_tokenizer(sft_model, trust_remote_code=cfg.model.trust_remote_code)
    collator = PairCollator(tokenizer.pad_token_id)
    other_reference = job.reference_model is not None
    # Before the model loads: DeepSpeed ZeRO-3 shards the weights as they load when it knows its config.
    # With another model as reference the policy starts away from it, so the held-out margins at
    # step 0 are measured (the Trainer's own evaluation at step 0, as SFT's) rather than known to be 0.
    args = training_arguments(
        cfg.dpo, out, has_eval=bool(eval_rows), device=device, eval_on_start=other_reference and bool(eval_rows)
    )
    reference_seconds = 0.0
    if other_reference:  # the reference alone first, then the policy: one model in memory at a time
        reference_seconds = _precompute_reference(
            state, out, rows, eval_rows, collator, cfg, args.bf16, phase_progress, job.reference_model, device
        )
    model = lora_model(sft_model, cfg, cfg.dpo, device)
    share = cfg.dpo.share_prompts and prompt_sharing_holds(model, rows, collator)
    metrics["share_prompts"] = share
    if cfg.dpo.precompute_ref_log_probs and not other_reference:
        reference_seconds = _precompute_reference(
            state, out, rows, eval_rows, collator, cfg, args.bf16, phase_progress, model, device, share=share
        )
    if cfg.dpo.precompute_ref_log_probs:
        metrics["reference_seconds"] = round(reference_seconds, 1)
    trainer = PairTrainer(
        model=model,
        args=args,
        train_dataset=as_dataset(rows),
        eval_dataset=as_dataset(eval_rows) if eval_rows else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=tracker_callbacks(cfg.dpo, out) + ([progress] if progress else []),
        beta=cfg.dpo.beta,
        loss_type=cfg.dpo.loss_type,
        rpo_alpha=cfg.dpo.rpo_alpha,
        displacement_warn=cfg.dpo.displacement_warn_nats,
        share_prompts=share,
    )
    # At the start the fresh adapter adds exactly zero (LoRA B starts at 0), so the policy equals
    # its reference and every held-out margin is 0: known without an evaluation pass.
    before = {"eval_rewards/accuracies": 0.0, "eval_rewards/margins": 0.0} if eval_rows else {}
    started, started_step = time.perf_counter(), trainer.state.global_step
    result = trainer.train(resume_from_checkpoint=True if resuming else None)
    if other_reference and eval_rows:
        before = initial_evaluation(trainer)
    evaluating = evaluation_seconds(trainer, started_step)
    seconds = time.perf_counter() - started - evaluating
    after = {}
    if eval_rows:  # the Trainer's own end-of-training pass, when its margins are at hand
        after = (final_evaluation(trainer, started_step) if trainer.eval_margins else None) or trainer.evaluate()
        metrics["held_out_by_source"] = reward_stats_by_source(trainer.eval_margins, eval_rows)  # same pass
    warnings = list(trainer.warnings)
    adapter_dir = out / "adapter"
    save_adapter(trainer, model, tokenizer, adapter_dir, out, state)
    generator = None
    if job.length_prompts and state.is_main_process:
        length_prompts = job.length_prompts
        model.eval()
        # Training under bf16 autocast left accelerate's autocast wrapper on model.forward: answers
        # for the length check are generated in the model's own dtype, as evaluation generates them
        # (under the wrapper the engine's fp32 cache received bf16 keys and the engine fell back to HF).
        extract_model_from_parallel(model, keep_fp32_wrapper=False)
        generator = make_generator(
            model, tokenizer, backend=cfg.generation.backend, batch_size=cfg.generation.batch_size
        )
        with model.disable_adapter():
            sft_length = mean_answer_length(generator, length_prompts, cfg.generation.max_new_tokens)
        dpo_length = mean_answer_length(generator, length_prompts, cfg.generation.max_new_tokens)
        ratio = dpo_length / max(sft_length, 1e-9)
        metrics.update(length_sft=round(sft_length, 1), length_dpo=round(dpo_length, 1))
        if not 1 / cfg.dpo.length_drift_warn <= ratio <= cfg.dpo.length_drift_warn:
            message = (
                f"mean answer length drifted from {sft_length:.0f} (SFT) to {dpo_length:.0f} tokens (DPO) "
                f"on {len(length_prompts)} held-out prompts"
            )
            logger.warning(message)
            warnings.append(message)
    if state.is_main_process:
        (out / "log_history.json").write_text(json.dumps(log_history(trainer), indent=1))
    tokens = sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows) * cfg.dpo.epochs
    metrics.update(
        steps=result.global_step,
        train_seconds=round(seconds, 1),  # held-out evaluations during training excluded
        eval_seconds_in_training=round(evaluating, 1),
        tokens_per_second=round(tokens / seconds, 1) if not resuming else None,
        train_loss=recorded_train_loss(result, trainer, resuming),
        eval_before={k: v for k, v in before.items() if k.startswith("eval_")},
        eval_after={k: v for k, v in after.items() if k.startswith("eval_")},
        warnings=warnings,
        bf16=args.bf16,
        **launch_facts(state, cfg.dpo),
    )
    del trainer, generator
    unload(model)
    return metrics


def _precompute_reference(
    state, out: Path, rows, eval_rows, collator, cfg, bf16: bool, phase_progress, reference, device, share=None
) -> float:
    """Add the reference log-probs to `rows` and `eval_rows`, computed once by the main process and
    shared through a file with the others; returns the seconds it took. `reference` is the policy
    itself (its adapter disabled for the pass; `share`: its prompt-sharing verdict) or the spec of
    another model, loaded here alone, checked for prompt sharing, and unloaded after."""
    started = time.perf_counter()
    shared = out / "launch" / "reference_logps.json"
    with state.main_process_first():  # the main process computes, the others read its numbers
        if state.is_main_process:
            own = not isinstance(reference, str)
            model = reference if own else training_weights(reference, cfg, device)
            if share is None:
                share = cfg.dpo.share_prompts and prompt_sharing_holds(model, rows, collator)
            for label, part in (("reference log-probs", rows), ("reference log-probs, held-out", eval_rows)):
                reference_logps(  # each part numbers its own prompt groups
                    model,
                    part,
                    collator,
                    cfg.dpo.per_device_batch_size * 2,
                    bf16,
                    share_prompts=share,
                    adapter_off=own,
                    progress=(lambda done, total, label=label: phase_progress(label, done, total))
                    if phase_progress and part
                    else None,
                )
            if not own:
                unload(model)
            if state.num_processes > 1:
                shared.write_text(json.dumps([_reference_of(part) for part in (rows, eval_rows)]))
        else:
            for part, values in zip((rows, eval_rows), json.loads(shared.read_text())):
                for row, (chosen, rejected) in zip(part, values):
                    row["ref_chosen_logps"], row["ref_rejected_logps"] = chosen, rejected
    return time.perf_counter() - started


def _reference_of(rows: list[dict]) -> list[tuple[float, float]]:
    return [(row["ref_chosen_logps"], row["ref_rejected_logps"]) for row in rows]
