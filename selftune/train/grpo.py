"""GRPO training: a fresh LoRA on the merged DPO model, trained online with TRL's GRPOTrainer.

Each step the model answers a batch of train prompts, `grpo.num_generations` answers each; the
run's scorer rewards every answer (for constraint prompts the share of checks met, the quality
checks included; for a judge or reward model their score), and each answer's advantage is its
reward against its group's. The reference of the optional KL term (`grpo.beta`) is the merged DPO
model itself, adapter disabled, never a second copy.

Rollouts (`grpo.rollouts`): `engine` writes them with selftune's generation engine on the
training weights, seeded by (grpo.seed, optimizer step, prompt, sample) like every sampled answer,
each answer capped at its prompt's own budget, and returns the exact token ids sampled; a run
resumed from a checkpoint replays the same rollouts. `trl` leaves generation to GRPOTrainer (its
transformers generate, or vLLM in colocate mode with the vllm backend). bench/grpo.py measures
the two side by side (docs/performance.md).

The reward functions are plain TRL reward functions (`prompts, completions, **columns`, one float
per completion): `ScorerReward` scores with the run's scorer, and a second function with weight 0
logs the share of answers that pass every check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

from accelerate.utils import extract_model_from_parallel
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler

from selftune.config import PipelineConfig
from selftune.data.records import PromptRecord
from selftune.generation.budget import generate_with_budgets
from selftune.generation.local import make_generator
from selftune.generation.sampling import encode_prompt
from selftune.generation.types import SamplingParams
from selftune.generation.vllm import vllm_available
from selftune.models import load_tokenizer, unload
from selftune.scoring.registry import make_scorer
from selftune.train.jobs import GRPOJob
from selftune.train.toolkit import (
    as_dataset,
    launch_facts,
    launch_state,
    log_history,
    lora_model,
    recorded_train_loss,
    save_adapter,
    tracker_callbacks,
    training_arguments,
)
from selftune.train.trainer import TrainingGuard

logger = logging.getLogger("selftune.grpo")


def prompt_key(messages) -> str:
    return json.dumps(messages, sort_keys=True)


def completion_text(completion) -> str:
    """A TRL completion as text: plain text, or the last message of a conversational one."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


class ScorerReward:
    """A TRL reward function: each answer's score under the run's scorer (in [0, 1]). The dataset's
    `prompt_id` column names the prompt record whose constraints the scorer checks."""

    __name__ = "scorer"

    def __init__(self, scorer, prompts: dict[str, PromptRecord]):
        self.scorer, self.prompts = scorer, prompts
        self.passed: dict[tuple[str, str], bool] = {}  # of the last call, for `PassRate`

    def __call__(self, prompts, completions, prompt_id, **_columns) -> list[float]:
        rewards, self.passed = [], {}
        for pid, completion in zip(prompt_id, completions):
            text = completion_text(completion)
            result = self.scorer.score(self.prompts[pid], [text])[0]
            self.passed[(pid, text)] = result.passed
            rewards.append(float(result.score))
        return rewards


class PassRate:
    """A TRL reward function with weight 0: whether the answer passed every check (logged as
    rewards/passed/mean), from the scores `ScorerReward` just computed."""

    __name__ = "passed"

    def __init__(self, reward: ScorerReward):
        self.reward = reward

    def __call__(self, prompts, completions, prompt_id, **_columns) -> list[float]:
        return [float(self.reward.passed[(pid, completion_text(c))]) for pid, c in zip(prompt_id, completions)]


@contextlib.contextmanager
def plain_forward(model):
    """`model` without accelerate's autocast wrapper on its forward for the block (the engine runs
    the weights in their own dtype, as every other generation does; under the wrapper its fp32
    cache received bf16 keys), the wrapper restored after it, for the training steps."""
    wrapped, original = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if wrapped is None or original is None:
        yield model
        return
    extract_model_from_parallel(model, keep_fp32_wrapper=False)
    try:
        yield model
    finally:
        model.forward, model._original_forward = wrapped, original


class EngineRollouts:
    """TRL's `rollout_func`: the answers to a batch of prompts, written by selftune's engine.

    GRPOTrainer hands each process its slice of the batch, every prompt repeated
    `num_generations` times in a row (a group may span two processes). A run of one prompt's
    copies gets that many samples with sample indices continuing where the group's earlier copies
    (on this process or the one before) stopped, so no two answers of a group share a seed."""

    def __init__(self, cfg, tokenizer, prompts: list[PromptRecord], budgets: list[int]):
        self.cfg, self.tokenizer = cfg, tokenizer
        # Each prompt's answer budget, by its messages (what GRPOTrainer hands over).
        self.budgets = {prompt_key([m.model_dump() for m in p.messages]): b for p, b in zip(prompts, budgets)}
        self.generator = None
        self.seconds = 0.0

    def __call__(self, prompts: list, trainer) -> dict:
        started = time.perf_counter()
        group = self.cfg.grpo.num_generations
        offset = trainer.accelerator.process_index * len(prompts)
        keys = [prompt_key(messages) for messages in prompts]
        runs: list[tuple[int, int]] = []  # (first position, copies) of each run of one prompt
        for position, key in enumerate(keys):
            if runs and key == keys[runs[-1][0]] and (offset + position) % group:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((position, 1))
        # Runs of the same length and first sample index share one generate call.
        calls: dict[tuple[int, int], list[int]] = defaultdict(list)
        for first, copies in runs:
            calls[(copies, (offset + first) % group)].append(first)
        model = trainer.accelerator.unwrap_model(trainer.model)
        completion_ids: list[list[int]] = [[] for _ in prompts]
        was_training = model.training
        model.eval()
        with plain_forward(model):
            if self.generator is None:
                self.generator = make_generator(
                    model,
                    self.tokenizer,
                    backend="continuous" if self.cfg.grpo.rollouts == "engine" else "auto",
                    batch_size=self.cfg.generation.batch_size,
                    trained=True,  # the adapter changes between rollouts: never kept prepacked
                )
            for (copies, first_sample), firsts in sorted(calls.items()):
                params = SamplingParams(
                    n=copies,
                    temperature=self.cfg.grpo.temperature,
                    top_p=self.cfg.grpo.top_p,
                    max_new_tokens=self.cfg.generation.max_new_tokens,
                    # The same step, prompt and sample index give the same answer, also after a resume.
                    seed=self.cfg.grpo.seed + 1_000_003 * trainer.state.global_step + 7919 * first_sample,
                )
                answers = generate_with_budgets(
                    self.generator,
                    [prompts[first] for first in firsts],
                    params,
                    [self.budgets[keys[first]] for first in firsts],
                )
                for first, row in zip(firsts, answers):
                    for k, completion in enumerate(row):
                        completion_ids[first + k] = list(completion.token_ids)
        model.train(was_training)
        self.seconds += time.perf_counter() - started
        return {
            "prompt_ids": [encode_prompt(self.tokenizer, messages) for messages in prompts],
            "completion_ids": completion_ids,
            "logprobs": None,  # the sampling log-probs serve only vLLM's importance correction
        }


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler (each prompt `num_generations` times in a row, whole generation batches)
    with each epoch's prompt order seeded by (seed, epoch) rather than drawn from one generator
    that advances epoch after epoch: a run resumed at an epoch boundary starts with a fresh
    sampler, which drew the first epoch's order again (a fault-suite kill after the first epoch
    found it). The Trainer calls `set_epoch` at the start of every epoch."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) * 1_000_003 + epoch)


class GRPOTrainingRun(TrainingGuard, GRPOTrainer):
    """GRPOTrainer with selftune's guard and an epoch-seeded prompt order. A step whose every group
    gave its answers equal rewards has zero advantages, and with no KL term a gradient of exactly
    0: that is no collapse."""

    def _get_train_sampler(self, dataset=None):
        return EpochSeededRepeatSampler(
            data_source=dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def zero_gradient_expected(self, logs) -> bool:
        # The trainer adds its own metrics to the logs after this check: read them where it keeps them.
        shares = self._metrics["train"].get("frac_reward_zero_std", [])
        return bool(shares) and all(share == 1.0 for share in shares)


def rollouts_by_engine(cfg) -> bool:
    """Whether selftune's engine writes the rollouts (`grpo.rollouts`; auto: unless vLLM serves)."""
    if cfg.grpo.rollouts != "auto":
        return cfg.grpo.rollouts == "engine"
    return not (cfg.generation.backend in ("auto", "vllm") and vllm_available())


def train_grpo(cfg: PipelineConfig, out: Path, job: GRPOJob, *, progress=None) -> dict:
    """Train the fresh GRPO adapter on the merged DPO model, in this process or in each
    `accelerate launch` process; the main process writes the adapter and the log history.
    Returns the training metrics."""
    state, device = launch_state()
    prompts = [PromptRecord.model_validate(p) for p in job.prompts]
    tokenizer = load_tokenizer(job.dpo_model, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer.padding_side = "left"  # GRPOTrainer pads prompts on the left
    engine = rollouts_by_engine(cfg)
    g = cfg.grpo
    args = training_arguments(
        g,
        out,
        has_eval=False,
        device=device,
        arguments_class=GRPOConfig,
        num_generations=g.num_generations,
        max_completion_length=max(job.budgets),
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        steps_per_generation=g.gradient_accumulation,
        shuffle_dataset=True,
        log_completions=False,
        use_vllm=not engine and cfg.generation.backend == "vllm",
        vllm_mode="colocate",
    )
    model = lora_model(job.dpo_model, cfg, g, device)
    rows = [{"prompt": [m.model_dump() for m in p.messages], "prompt_id": p.id} for p in prompts]
    rollouts = EngineRollouts(cfg, tokenizer, prompts, job.budgets) if engine else None
    with make_scorer(cfg, None) as scorer:
        reward = ScorerReward(scorer, {p.id: p for p in prompts})
        args.reward_weights = [1.0, 0.0]
        with _quiet_experimental():
            trainer = GRPOTrainingRun(
                model=model,
                reward_funcs=[reward, PassRate(reward)],
                args=args,
                train_dataset=as_dataset(rows),
                processing_class=tokenizer,
                callbacks=tracker_callbacks(g, out) + ([progress] if progress else []),
                rollout_func=rollouts,
            )
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=True if job.resuming else None)
        seconds = time.perf_counter() - started
    save_adapter(trainer, model, tokenizer, out / "adapter", out, state)
    history = log_history(trainer)
    if state.is_main_process:
        (out / "log_history.json").write_text(json.dumps(history, indent=1))
    metrics = dict(
        steps=result.global_step,
        train_seconds=round(seconds, 1),
        rollout_seconds=round(rollouts.seconds, 1) if rollouts else None,
        rollouts="engine" if engine else "trl",
        train_loss=recorded_train_loss(result, trainer, job.resuming),
        bf16=args.bf16,
        **reward_summary(history),
        **launch_facts(state, g),
    )
    del trainer
    unload(model)
    return metrics


def reward_summary(history: list[dict]) -> dict:
    """The reward, pass rate and zero-variance share at the first and last logged steps, and the
    mean answer length and KL over training (from the log history)."""
    steps = [entry for entry in history if "reward" in entry]
    if not steps:
        return {}

    def mean(key: str) -> float | None:
        values = [entry[key] for entry in steps if isinstance(entry.get(key), int | float)]
        return round(sum(values) / len(values), 4) if values else None

    first, last = steps[0], steps[-1]
    summary = {
        "reward_first": round(first["reward"], 4),
        "reward_last": round(last["reward"], 4),
        "reward_mean": mean("reward"),
        "pass_rate_first": first.get("rewards/passed/mean"),
        "pass_rate_last": last.get("rewards/passed/mean"),
        "zero_std_groups": mean("frac_reward_zero_std"),
        "completion_length": mean("completions/mean_length"),
    }
    if any("kl" in entry for entry in steps):
        summary["kl_mean"] = mean("kl")
    return {k: v for k, v in summary.items() if v is None or not isinstance(v, float) or math.isfinite(v)}


@contextlib.contextmanager
def _quiet_experimental():
    """TRL warns that `rollout_func` is experimental on every trainer it builds; selftune pins the
    TRL versions it is tested with (pyproject.toml), so the warning says nothing to a user."""
    import os

    before = os.environ.get("TRL_EXPERIMENTAL_SILENCE")
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRL_EXPERIMENTAL_SILENCE", None)
        else:
            os.environ["TRL_EXPERIMENTAL_SILENCE"] = before
