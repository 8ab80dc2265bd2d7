"""What the SFT and DPO trainers share: arguments, adapter shape, checkpoints, log history.

Both stages train a LoRA adapter with transformers' Trainer on rows already tokenized and masked
by selftune. This module holds the parts that must behave the same in both: how a config section
becomes `TrainingArguments` and a peft `LoraConfig`, which checkpoints a rerun may resume from,
where TensorBoard logs go, and how the adapter is saved from several processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import zipfile
from pathlib import Path

import torch

from selftune.errors import ModelSpecError, SelftuneError
from selftune.models import (
    check_lora_targets,
    check_model_spec,
    check_safetensors,
    cpu_bf16_speedup,
    default_device,
    load_model,
    load_tokenizer,
)
from selftune.models.limits import (
    MemoryEstimate,
    check_fits,
    check_length_setting,
    model_shape,
    training_memory,
)
from selftune.run.folder import StageContext
from selftune.train.masking import response_separator
from selftune.train.merge import merge_adapter

# peft (4.8 s), transformers (~3 s for a model class, 6 s for the Trainer), accelerate (1.6 s),
# datasets (0.9 s) and TensorBoard's writer (2 s) are imported where training uses them: the
# stages import this module to prepare their data and checkpoints long before anything trains.

logger = logging.getLogger("selftune.training")


class NonFiniteLossError(SelftuneError):
    """Training produced a NaN or inf loss."""


class TrainingCollapsedError(SelftuneError):
    """The gradient vanished (norm 0) or blew up (not finite): the model stopped learning."""


def use_bf16(setting, device: str) -> bool:

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


def training_arguments(train_cfg, out_dir: Path, *, has_eval: bool, device: str, arguments_class=None, **extra):
    """`train_cfg` as transformers' TrainingArguments, or as `arguments_class` (a subclass such as
    TRL's GRPOConfig, its own settings in `extra`)."""
    from transformers import TrainingArguments

    return (arguments_class or TrainingArguments)(
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


def initial_evaluation(trainer) -> dict:
    """The held-out evaluation at step 0 (`eval_on_start`; after a resume, from the restored log
    history of the interrupted run); empty when the log holds none (a checkpoint written before
    training evaluated at step 0)."""
    for entry in trainer.state.log_history:
        if "eval_loss" in entry and entry.get("step") == 0:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def evaluation_seconds(trainer, started_step: int) -> float:
    """Seconds spent in held-out evaluations during this `train()` call (logged as eval_runtime;
    the step-0 one of a fresh start included), so the training throughput counts training only."""
    return sum(
        entry.get("eval_runtime", 0.0)
        for entry in trainer.state.log_history
        if "eval_loss" in entry and (entry.get("step", 0) > started_step or entry.get("step") == started_step == 0)
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

    state = PartialState()
    return state, (default_device() if state.num_processes == 1 else str(state.device))


def training_weights(spec: str, cfg, device: str):
    """`spec` loaded as a training stage runs it: fp32 weights with bf16 entering through autocast,
    or bf16 under 4-bit; no adapter (DPO's reference model when it is another model)."""
    return load_model(
        spec,
        dtype="float32" if not cfg.model.load_in_4bit else "bfloat16",
        device=device,
        load_in_4bit=cfg.model.load_in_4bit,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def lora_model(spec: str, cfg, train_cfg, device: str):
    """The model a training stage trains: `spec` loaded for training (`training_weights`; under
    4-bit prepared for k-bit training) with a fresh LoRA adapter (`train_cfg.lora`), seeded first
    so its random init does not depend on what ran before."""
    from peft import get_peft_model
    from transformers import set_seed

    model = training_weights(spec, cfg, device)
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


# ---------------------------------------------------------------------------------------------
# The steps both training stages take around the training
# ---------------------------------------------------------------------------------------------


def check_trainable(model: str, cfg, section: str) -> None:
    """Before anything loads: `model` is a usable spec and `section`'s LoRA targets (`sft` or
    `dpo`) name modules it has."""
    check_model_spec(model, trust_remote_code=cfg.model.trust_remote_code)
    check_lora_targets(model, getattr(cfg, section).lora.target_modules, f"{section}.lora.target_modules")


def check_training_memory(
    model: str, cfg, section: str, *, examples: int, length: int, per_example: int = 1
) -> MemoryEstimate | None:
    """Before `model` loads for training: its `max_length` within the context window, and the
    estimated peak of a step (`selftune.models.limits`) within the memory available: per GPU on a
    GPU machine; on the CPU the processes of `train.launcher: accelerate` share the RAM, one model
    each. A step runs `per_example` sequences (a pair's two answers) of up to `length` tokens for
    each example of its batch, which holds at most the `examples` there are. Returns the estimate
    (None where the model's shape cannot be known offline)."""
    settings = getattr(cfg, section)
    sequences = per_example * min(settings.per_device_batch_size, max(1, examples))
    shape = model_shape(model, trust_remote_code=cfg.model.trust_remote_code)
    if shape is None:
        return None
    check_length_setting(shape, settings.max_length, f"{section}.max_length")
    device = default_device()
    estimate = training_memory(
        shape,
        sequences=sequences,
        length=length,
        gradient_checkpointing=settings.gradient_checkpointing,
        lora_rank=settings.lora.r,
        device=device,
        quantized=cfg.model.load_in_4bit,
    )
    processes = cfg.train.num_processes if cfg.train.launcher == "accelerate" and device == "cpu" else 1
    needed = MemoryEstimate(device, {k: v * processes for k, v in estimate.parts.items()})
    check_fits(
        needed,
        f"{section}: a step of {sequences} sequences of up to {length} tokens"
        + (f" in each of {processes} processes" if processes > 1 else ""),
        f"lower {section}.per_device_batch_size (raise {section}.gradient_accumulation to keep the effective "
        f"batch) or {section}.max_length"
        + ("" if settings.gradient_checkpointing else f", or set {section}.gradient_checkpointing: true"),
    )
    return estimate


def training_tokenizer(model: str, cfg) -> tuple:
    """`model`'s tokenizer and the separator its examples are rendered with (`response_separator`)."""
    tokenizer = load_tokenizer(model, trust_remote_code=cfg.model.trust_remote_code)
    return tokenizer, response_separator(tokenizer, cfg.sft.response_separator)


def resume_point(stage: StageContext) -> bool:
    """Whether the stage's training resumes from a checkpoint of this very config and data
    (`prepare_checkpoints`, with the stage's fingerprint)."""
    return prepare_checkpoints(stage.dir, stage.fingerprint, stage=stage.name, finished_before=stage.finished_before)


def record_adapter(
    stage: StageContext,
    base: str,
    cfg,
    metrics: dict,
    *,
    merge: bool = True,
    memory: MemoryEstimate | None = None,
) -> Path:
    """Record the trained adapter and its log history as the stage's outputs, with `metrics` (and
    the `memory` estimate beside the measured peak), then merge the adapter into `base` (output
    `merged`, with the merge's logit check). Returns the merged model, or the adapter when `merge`
    is off."""
    adapter_dir = stage.dir / "adapter"
    stage.add_output("log_history", stage.dir / "log_history.json")
    stage.add_output("adapter", adapter_dir)
    stage.metrics.update(metrics)
    if memory is not None:
        stage.metrics["memory"] = {**memory.record(), "peak_gib": metrics.get("peak_memory_gib")}
    if not merge:
        return adapter_dir
    merged = merge_adapter(base, adapter_dir, stage.dir / "merged", trust_remote_code=cfg.model.trust_remote_code)
    stage.add_output("merged", merged.path)
    stage.metrics["merge_max_logit_diff"] = merged.max_logit_diff
    return merged.path
