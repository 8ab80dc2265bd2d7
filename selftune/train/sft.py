"""LoRA SFT training with the loss on response tokens only (one process, or each `accelerate
launch` process). The stage (`selftune.stages.sft`) prepares the rows and merges the adapter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.nn.functional as F
import yaml
from transformers import DataCollatorForSeq2Seq

from selftune.config import PipelineConfig
from selftune.models import load_tokenizer, unload
from selftune.train.jobs import SFTJob
from selftune.train.logprobs import accepts_logits_to_keep
from selftune.train.masking import IGNORE_INDEX
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
)
from selftune.train.trainer import GuardedTrainer


class ResponseTrainer(GuardedTrainer):
    """The causal-LM loss on response tokens, with the LM head run only from the first position
    that predicts a response token (`logits_to_keep`). The head is a fifth of a small model's
    FLOPs and the prompt a third to a half of an SFT example; the loss is the same sum over
    response tokens divided by the same token count as the model's own loss, so only the
    wasted work goes. Evaluation keeps the model's own loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not accepts_logits_to_keep(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]  # (B, T), right-padded, response tokens labelled
        width = labels.shape[1]
        answered = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero()
        start = int(answered[0]) if len(answered) else width - 2
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=width - start
        ).logits[:, :-1]  # (B, width-1-start, V): predict start+1..
        targets = labels[:, start + 1 :]
        total = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        if num_items_in_batch is None:
            return total / (targets != IGNORE_INDEX).sum()
        loss = total / num_items_in_batch
        if self.args.average_tokens_across_devices:
            # As the Trainer's own loss: the count covers every process's tokens and DDP averages
            # the processes' gradients, so each process's share is scaled back up.
            loss = loss * self.accelerator.num_processes
        return loss


def train_sft(cfg: PipelineConfig, out: Path, job: SFTJob, *, progress=None, phase_progress=None) -> dict:
    """Train the LoRA adapter on `job`'s rows; in this process or in each `accelerate launch`
    process (every process trains its share of each batch; the main one writes the adapter and the
    log history). Returns the training metrics."""
    base, train_rows, eval_rows, resuming = job.base, job.train_rows, job.eval_rows, job.resuming
    state, device = launch_state()
    tokenizer = load_tokenizer(base, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.padding_side = "right"
    # Before the model loads: DeepSpeed ZeRO-3 shards the weights as they load when it knows its config.
    # The held-out loss before training comes from the Trainer's own evaluation at step 0
    # (eval_on_start), not from trainer.evaluate() before train(): that call prepares the model for
    # evaluation, accelerate marks it prepared, and train() then skips the DDP wrap, so each of
    # several processes trained its own adapter on its share of the data. A resumed run evaluates
    # at its start too (the same random draws as the uninterrupted run: dropout losses stay equal)
    # and reads the step-0 value from the checkpoint's restored log history.
    args = training_arguments(cfg.sft, out, has_eval=bool(eval_rows), device=device, eval_on_start=bool(eval_rows))
    model = lora_model(base, cfg, cfg.sft, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = ResponseTrainer(
        model=model,
        args=args,
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(eval_rows) if eval_rows else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, pad_to_multiple_of=None),
        processing_class=tokenizer,
        callbacks=tracker_callbacks(cfg.sft, out) + ([progress] if progress else []),
    )
    started, started_step = time.perf_counter(), trainer.state.global_step
    result = trainer.train(resume_from_checkpoint=True if resuming else None)
    initial_eval = initial_evaluation(trainer).get("eval_loss") if eval_rows else None
    evaluating = evaluation_seconds(trainer, started_step)
    seconds = time.perf_counter() - started - evaluating
    final_eval = None
    if eval_rows:
        final_eval = (final_evaluation(trainer, started_step) or trainer.evaluate())["eval_loss"]
    adapter_dir = out / "adapter"
    save_adapter(trainer, model, tokenizer, adapter_dir, out, state)
    if state.is_main_process:
        (adapter_dir / "sft_config.yaml").write_text(
            yaml.safe_dump({"base": base, "sft": cfg.sft.model_dump(mode="json")})
        )
        (out / "log_history.json").write_text(json.dumps(log_history(trainer), indent=1))
    train_tokens = sum(len(r["input_ids"]) for r in train_rows) * cfg.sft.epochs
    trained_tokens = sum(sum(1 for label in r["labels"] if label != -100) for r in train_rows)
    metrics = dict(
        trainable_parameters=trainable,
        steps=result.global_step,
        train_seconds=round(seconds, 1),  # held-out evaluations during training excluded
        eval_seconds_in_training=round(evaluating, 1),
        tokens_per_second=round(train_tokens / seconds, 1) if not resuming else None,
        response_token_share=round(trained_tokens / max(1, sum(len(r["input_ids"]) for r in train_rows)), 4),
        eval_loss_before=initial_eval,
        eval_loss_after=final_eval,
        train_loss=recorded_train_loss(result, trainer, resuming),
        bf16=args.bf16,
        **launch_facts(state, cfg.sft),
    )
    del trainer
    unload(model)
    return metrics
