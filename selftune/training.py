"""What the SFT and DPO trainers share: arguments, adapter shape, the guarded Trainer, checkpoints.

Both stages train a LoRA adapter with transformers' Trainer on rows already tokenized and masked
by selftune. This module holds the parts that must behave the same in both: how a config section
becomes `TrainingArguments` and a peft `LoraConfig`, the Trainer that stops at the first non-finite
loss, which checkpoints a rerun may resume from, and where TensorBoard logs go.

Usage:
    from selftune.training import lora_config, make_trainer_class, prepare_checkpoints, training_arguments
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch

from selftune.errors import SelftuneError

logger = logging.getLogger("selftune.training")


class NonFiniteLossError(SelftuneError):
    """Training produced a NaN or inf loss."""


class TrainingCollapsedError(SelftuneError):
    """The gradient vanished (norm 0) or blew up (not finite): the model stopped learning."""


def use_bf16(setting, device: str) -> bool:
    from selftune.models import cpu_bf16_speedup

    if setting != "auto":
        return bool(setting)
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_speedup() >= 1.5


def lora_config(cfg):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )


def training_arguments(train_cfg, out_dir: Path, *, has_eval: bool, device: str, **extra):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=train_cfg.per_device_batch_size,
        per_device_eval_batch_size=train_cfg.per_device_batch_size,
        gradient_accumulation_steps=train_cfg.gradient_accumulation,
        learning_rate=train_cfg.learning_rate,
        lr_scheduler_type=train_cfg.scheduler,
        warmup_steps=train_cfg.warmup_ratio,  # a float below 1 is a share of all steps
        num_train_epochs=train_cfg.epochs,
        logging_steps=train_cfg.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=train_cfg.eval_steps,
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=2,
        bf16=use_bf16(train_cfg.bf16, device),
        activation_checkpointing=train_cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length",
        # TensorBoard is attached by `tracker_callbacks` so its logs land in the stage's logs/.
        report_to=[r for r in train_cfg.report_to if r != "tensorboard"] or "none",
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        use_cpu=not device.startswith("cuda"),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA on every targeted layer: no parameter goes unused
        disable_tqdm=True,
        **extra,
    )


def tracker_callbacks(train_cfg, out_dir: Path) -> list:
    if "tensorboard" not in train_cfg.report_to:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "logs")))]


def make_trainer_class():
    from transformers import Trainer

    class GuardedTrainer(Trainer):
        """Trainer that stops at the first non-finite loss, and at a collapsed run: a gradient
        norm of exactly 0 (a LoRA update has a nonzero gradient unless the model saturated, as a
        far too high learning rate does) or not finite. Both stop before any later checkpoint.
        The Trainer's own printing of raw log dicts is off: the logs go to the stage's
        log_history, and the console shows a progress bar when one is given."""

        def __init__(self, *args, **kwargs):
            from transformers.trainer_callback import PrinterCallback

            super().__init__(*args, **kwargs)
            self.remove_callback(PrinterCallback)

        def log(self, logs, *args, **kwargs):
            norm = logs.get("grad_norm")
            if norm is not None and (norm == 0 or not math.isfinite(norm)):
                raise TrainingCollapsedError(
                    f"training collapsed at step {self.state.global_step}: gradient norm {norm}. The model "
                    f"stopped learning (a learning rate far too high does this; it is "
                    f"{self.args.learning_rate:g}); lower it and run the stage again."
                )
            return super().log(logs, *args, **kwargs)

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss).all():
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at step {self.state.global_step + 1}; training stopped. "
                    f"The last good checkpoint stays in {self.args.output_dir}; lower the learning rate "
                    "or check the data, then rerun to resume from it."
                )
            return loss

    return GuardedTrainer


def make_sft_trainer_class():
    import torch.nn.functional as F

    from selftune.logprobs import accepts_logits_to_keep
    from selftune.masking import IGNORE_INDEX

    class ResponseTrainer(make_trainer_class()):
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

    return ResponseTrainer


def prepare_checkpoints(out_dir: Path, fingerprint: str, *, stage: str, finished_before: bool = False) -> bool:
    """Keep checkpoints only if they were written under the same config and inputs (`fingerprint`)
    by an attempt that did not finish (a finished stage run again retrains from the start); True
    when training will resume from one (and the log says from which)."""
    checkpoints = out_dir / "checkpoints"
    stamp = checkpoints / "selftune-fingerprint"
    if checkpoints.exists() and finished_before:
        logger.info("%s: the stage had finished; training again from the start", stage)
        shutil.rmtree(checkpoints)
    if checkpoints.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    # The Trainer writes trainer_state.json last; a process killed while saving leaves a folder
    # without a readable one, and a damaged file (a truncated optimizer.pt) would make every
    # resume fail. Such a folder is dropped with a warning: training resumes from the one before,
    # or starts over.
    for folder in list(found):
        problem = checkpoint_problem(folder)
        if problem:
            logger.warning("%s: dropping checkpoint %s (%s)", stage, folder.name, problem)
            shutil.rmtree(folder)
            found.remove(folder)
    if found:
        logger.info("%s: resuming from %s (step %s)", stage, found[-1], found[-1].name.split("-")[-1])
    return bool(found)


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None. Reads every file's framing
    (the safetensors header and length, the CRCs of torch's zip files); LoRA checkpoints are small."""
    import zipfile

    from selftune.errors import ModelSpecError
    from selftune.models import check_safetensors

    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json: interrupted while saving"
    try:
        for file in sorted(folder.rglob("*")):
            if file.suffix == ".safetensors":
                check_safetensors(file)
            elif file.suffix in (".pt", ".pth", ".bin"):
                if not zipfile.is_zipfile(file):
                    return f"{file.name} is damaged (not a complete torch file)"
                with zipfile.ZipFile(file) as archive:
                    if archive.testzip() is not None:
                        return f"{file.name} is damaged (a checksum does not match)"
    except ModelSpecError as exc:
        return str(exc)
    except (OSError, zipfile.BadZipFile) as exc:
        return f"unreadable: {exc}"
    return None


def recorded_train_loss(result, trainer, resumed: bool) -> float | None:
    """The train_loss a manifest records: over every step, also after a resume."""
    loss = mean_train_loss(log_history(trainer)) if resumed else result.training_loss
    return loss if loss is not None and math.isfinite(loss) else None


def mean_train_loss(history: list[dict]) -> float | None:
    """The training loss over every step from the logged losses (each averages its logging
    interval), weighted by interval: after a resume the Trainer's own figure covers only the
    resumed steps, while the log history, restored from the checkpoint, covers them all."""
    total = steps = previous = 0
    for entry in history:
        if "loss" in entry and "step" in entry and entry["step"] > previous:
            total += entry["loss"] * (entry["step"] - previous)
            steps += entry["step"] - previous
            previous = entry["step"]
    return total / steps if steps else None


def final_evaluation(trainer, started_step: int) -> dict | None:
    """The held-out evaluation the Trainer ran at its last step (with step-based evaluation it
    evaluates when training ends), or None when it ran none this time: an evaluation after
    `train()` would repeat it (the demo's SFT evaluated twice, 13 s each, before this)."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry and entry.get("step") == step and step > started_step:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return None


def evaluation_seconds(trainer, started_step: int) -> float:
    """Seconds spent in held-out evaluations during this `train()` call (logged as eval_runtime),
    so the training throughput counts training only."""
    return sum(
        entry.get("eval_runtime", 0.0)
        for entry in trainer.state.log_history
        if "eval_loss" in entry and entry.get("step", 0) > started_step
    )


def log_history(trainer) -> list[dict]:
    return [{k: v for k, v in entry.items()} for entry in trainer.state.log_history]


def as_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def launch_state():
    """(accelerate's PartialState, the device this process trains on): the default device when
    alone, this process's own device under `accelerate launch` (cuda:K, or the CPU)."""
    from accelerate import PartialState

    from selftune.models import default_device

    state = PartialState()
    return state, (default_device() if state.num_processes == 1 else str(state.device))


def lora_model(spec: str, cfg, train_cfg, device: str):
    """The model a training stage trains: `spec` loaded for training (fp32 weights, bf16 entering
    through autocast; bf16 under 4-bit, prepared for k-bit training) with a fresh LoRA adapter
    (`train_cfg.lora`), seeded first so its random init does not depend on what ran before."""
    from peft import get_peft_model
    from transformers import set_seed

    from selftune.models import load_model

    model = load_model(
        spec,
        dtype="float32" if not cfg.model.load_in_4bit else "bfloat16",
        device=device,
        load_in_4bit=cfg.model.load_in_4bit,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    if cfg.model.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train_cfg.gradient_checkpointing)
    set_seed(train_cfg.seed)
    return get_peft_model(model, lora_config(train_cfg.lora))


def launch_facts(state, train_cfg) -> dict:
    """What the manifest records of how a stage trained: processes, accelerate's distributed type
    and the effective batch (per-device batch x accumulation x processes)."""
    return {
        "processes": state.num_processes,
        "distributed": str(getattr(state.distributed_type, "value", state.distributed_type)),
        "effective_batch": train_cfg.per_device_batch_size * train_cfg.gradient_accumulation * state.num_processes,
    }


def adapter_digest(model) -> str:
    """sha256 over the trainable (LoRA) parameters, by name, as this process holds them."""
    import hashlib

    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def save_adapter(trainer, model, tokenizer, adapter_dir: Path, out: Path, state) -> None:
    """Save the trained adapter from the main process. Sharded weights (FSDP, ZeRO-3) are gathered
    first, which every process must join; under `accelerate launch` each process also records the
    digest of its adapter (launch/rank-K.json) so a run can show they all agree."""
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if state.num_processes > 1:
        (out / "launch").mkdir(exist_ok=True)
        (out / "launch" / f"rank-{state.process_index}.json").write_text(
            json.dumps({"adapter_sha256": adapter_digest(model)})
        )
    if state.is_main_process:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        model.save_pretrained(adapter_dir, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
    state.wait_for_everyone()
