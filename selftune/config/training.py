"""The config sections of the training stages: the adapter shape (`LoraSection`), what every
training stage shares (`TrainSection`), and the sections of sft, dpo and the optional grpo stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from selftune.config.base import Section


class LoraSection(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    # No dropout by default. On the development CPU, dropout's random masks took 13% of an SFT step
    # (py-spy) and SFT with dropout 0 ran 1.28x the tokens/s of 0.05 with the same held-out loss
    # (1.6609 against 1.6612 and 1.6614 for two seeds; bench/sft.py --dropout-rows, docs/performance.md).
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (0 = none).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt; all-linear = every linear layer but the head."
    )


class TrainSection(Section):
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training data.")
    per_device_batch_size: int = Field(8, ge=1, description="Examples per device per micro-batch.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    max_length: int = Field(1024, ge=16, description="Longest tokenized example; longer ones are truncated.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    bf16: Literal["auto", True, False] = Field(
        "auto", description="bf16 autocast; auto = where the hardware runs it fast."
    )
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many optimizer steps.")
    eval_steps: int = Field(25, ge=1, description="Held-out loss every this many optimizer steps.")
    logging_steps: int = Field(5, ge=1, description="Log every this many optimizer steps.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="Experiment trackers."
    )
    seed: int = Field(0, description="Training seed.")


class SFTSection(TrainSection):
    lora: LoraSection = Field(default_factory=LoraSection, description="Adapter shape.")
    validation_share: float = Field(0.1, ge=0, lt=1, description="Share of SFT examples held out for validation loss.")
    max_drop_share: float = Field(
        0.05, ge=0, le=1, description="Fail when more than this share of rows cannot be masked."
    )
    response_separator: str = Field("\nResponse:", description="Separator for raw-text models with no chat template.")
    merge: bool = Field(True, description="Merge the adapter into the base after training (DPO needs it).")


class DPOSection(TrainSection):
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    beta: float = Field(0.1, gt=0, description="DPO temperature: strength of the pull towards the reference.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "rpo"] = Field("sigmoid", description="Preference loss.")
    rpo_alpha: float = Field(1.0, ge=0, description="Weight of the NLL term on chosen when loss_type is rpo.")
    precompute_ref_log_probs: bool = Field(True, description="Compute reference log-probs once before training.")
    reference: Literal["sft", "start", "base"] = Field(
        "sft",
        description=(
            "The reference model: sft = the merged SFT model the adapter trains on (adapter disabled); "
            "start = the model this round's SFT trained from (round 1: the base; later: the last round's "
            "final model); base = the run's base model in every round. start and base load alone, "
            "before the policy, for the precomputed pass."
        ),
    )
    share_prompts: bool = Field(
        True, description="Run each prompt once for all its answers in a batch (exact; checked on the model first)."
    )
    displacement_warn_nats: float = Field(
        0.5, gt=0, description="Warn when chosen log-prob per token falls this far below its start."
    )
    length_check_prompts: int = Field(
        16, ge=0, description="Held-out prompts answered by SFT and DPO to check length drift (0 = off)."
    )
    length_drift_warn: float = Field(1.5, gt=1, description="Warn when DPO/SFT mean answer length leaves [1/x, x].")
    # No dropout by default: the implicit reward compares the policy's log-probs with the reference's,
    # which are computed without dropout, so dropout in the policy pass only adds noise to every
    # margin (TRL's DPOTrainer disables dropout for the same reason). It also saved ~20% of a step.
    lora: LoraSection = Field(
        default_factory=lambda: LoraSection(dropout=0.0),
        description="Shape of the fresh DPO adapter (dropout 0: see above).",
    )

    @model_validator(mode="after")
    def _reference_precomputed(self) -> DPOSection:
        # Another model as reference is loaded once, alone, before the policy (one model in memory
        # at a time); a per-step reference pass would need both at once.
        if self.reference != "sft" and not self.precompute_ref_log_probs:
            raise ValueError(
                f"reference {self.reference!r} needs precompute_ref_log_probs: true (only the SFT model "
                "itself can serve as a per-step reference)"
            )
        return self


class GRPOSection(TrainSection):
    """Online RL after DPO: a fresh LoRA on the merged DPO model, trained with TRL's GRPOTrainer on
    answers it writes while it trains, each rewarded by the run's scorer (`selftune.train.grpo`)."""

    enabled: bool = Field(False, description="Run the grpo stage after dpo in every round.")
    # 1e-4 and 3e-4 measured on the transfer preset's round 4 (docs/gain.md): neither gained;
    # 3e-4 changed more answers.
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the GRPO prompts.")
    per_device_batch_size: int = Field(8, ge=1, description="Completions per device per micro-batch.")
    gradient_accumulation: int = Field(2, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming up.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "constant", description="Learning-rate schedule after warm-up."
    )
    prompts: int = Field(
        64, ge=0, description="Train prompts of the round trained on (a seeded draw; 0 = all of them)."
    )
    num_generations: int = Field(
        8, ge=2, description="Group size: answers per prompt, whose rewards are compared with each other."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass of the rollouts.")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the merged DPO model (0 = no KL term).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clipping range of the policy ratio.")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="How token losses are averaged (TRL's loss_type)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantages divided by the reward std of the group, of the batch, or not at all."
    )
    rollouts: Literal["auto", "engine", "trl"] = Field(
        "auto",
        description="Who writes the rollouts: engine = selftune's generation engine on the training weights, "
        "seeded like every sample; trl = GRPOTrainer's own generation (vLLM in colocate mode when the "
        "generation backend is vllm); auto = trl with vllm, else engine.",
    )
    max_length: int = Field(1024, ge=16, description="Longest prompt plus answer, in tokens.")
    save_steps: int = Field(10, ge=1, description="Checkpoint every this many optimizer steps.")
    logging_steps: int = Field(1, ge=1, description="Log every this many optimizer steps.")
    lora: LoraSection = Field(
        default_factory=lambda: LoraSection(dropout=0.0), description="Shape of the fresh GRPO adapter."
    )

    @model_validator(mode="after")
    def _whole_groups(self) -> GRPOSection:
        # A step's completions are whole groups on one device (multiple processes: checked with
        # train.num_processes in PipelineConfig).
        batch = self.per_device_batch_size * self.gradient_accumulation
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_batch_size x gradient_accumulation ({batch}) must be a multiple of "
                f"num_generations ({self.num_generations}): every step trains on whole groups"
            )
        return self
