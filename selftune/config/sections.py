"""The config schema: one pydantic section per stage (the training stages' in `training`), and
`PipelineConfig` holding them all.

Every field has a default and a one-line description; unknown keys and booleans given for
numbers are errors. Checks that need the data registries (constraint types, negative sources,
benchmark names) run here, so a typo fails before any stage starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from selftune.config.base import Section
from selftune.config.training import DPOSection, GRPOSection, SFTSection
from selftune.data.benchmarks import parse_benchmark
from selftune.data.pairs import check_sources
from selftune.data.prompts import check_type_weights

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class ModelSection(Section):
    spec: str = Field(
        "builtin:smollm2-135m-instruct",
        description="Base model: builtin:NAME, a .gguf file, a checkpoint dir or a hub id.",
    )
    dtype: Dtype = Field("auto", description="Weights dtype; auto = bf16 where the hardware runs it fast, else fp32.")
    load_in_4bit: bool = Field(False, description="Load the base in 4-bit NF4 (QLoRA; CUDA + bitsandbytes only).")
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint; off unless you trust it.")


class GenerationSection(Section):
    backend: Literal["auto", "hf", "continuous", "vllm"] = Field(
        "auto",
        description="auto = vLLM when installed with a GPU, else the continuous-batching engine "
        "(hf where it cannot serve the model).",
    )
    batch_size: int = Field(64, ge=1, description="Sequences in flight (prompts x samples) per forward pass.")
    max_new_tokens: int = Field(
        256, ge=1, description="Answer budget, in tokens, of a prompt that asks for no particular length."
    )
    max_new_tokens_cap: int = Field(
        768,
        ge=1,
        description="Most tokens for a prompt that asks for a length (a word count, paragraphs, sections): "
        "its budget is about 1.4 tokens per word asked, between max_new_tokens and this.",
    )
    over_context: Literal["error", "skip"] = Field(
        "error",
        description="A prompt whose tokens plus its answer budget exceed the model's context window: error "
        "(named, before any weights load) or skip (left out, counted in the stage's manifest).",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine.")
    replicas: int = Field(
        1,
        ge=1,
        description="Copies of the model generating in parallel, each in its own process with a share "
        "of the prompts: one per GPU (tensor_parallel_size GPUs each with vLLM), or the CPU cores "
        "split between them. Answers are the same whatever the count.",
    )


class PromptsSection(Section):
    source: str = Field(
        "builtin",
        description="'builtin' (tasks x verifiable constraints), 'builtin:arithmetic' (word problems with a "
        "reference answer, for scorer.function builtin:final_number) or a JSONL / datasets-readable file.",
    )
    n_train: int = Field(300, ge=1, description="Train prompts to build from the builtin set.")
    n_eval: int = Field(
        200, ge=1, description="Held-out eval prompts (tasks, topics, constraint values and wordings unseen in train)."
    )
    max_constraints: int = Field(
        5, ge=1, le=5, description="Most constraints per builtin train prompt (1 to 5); eval prompts have 1 to 3."
    )
    long_form_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Share of builtin train prompts that are long-form tasks asking for 100 to 600 words "
        "(only lengths that fit generation.max_new_tokens_cap).",
    )
    fresh_each_round: bool = Field(
        True,
        description="Each round after the first samples new builtin train prompts (never seen in an earlier "
        "round); off: every round reuses round 1's.",
    )
    seed: int = Field(0, description="Seed of the builtin prompt set.")
    # The types SmolLM2-135M-Instruct passed in under 10% of 640 samples (K=8, 80 train prompts,
    # 128 tokens): lowercase 0, capital_words 0, letter_frequency 0, uppercase 2%, quoted 4%,
    # two_answers 4%, start_phrase 6%, json_format 8%. A prompt carrying one of them rarely yields
    # an SFT example, so they are drawn a quarter as often in train; they stay in the mix (a
    # larger model passes them, and a rare pass is still data) and eval draws all types evenly.
    type_weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(
            [
                "lowercase",
                "capital_words",
                "letter_frequency",
                "uppercase",
                "quoted",
                "two_answers",
                "start_phrase",
                "json_format",
            ],
            0.25,
        ),
        description="Relative weight of each constraint type in the builtin train mix (absent = 1, "
        "0 = never); eval draws all evenly.",
    )

    @field_validator("type_weights")
    @classmethod
    def _known_types(cls, weights: dict[str, float]) -> dict[str, float]:

        return check_type_weights(weights)


DEFAULT_PASS_THRESHOLD = {"constraints": 1.0, "judge": 0.7, "reward-model": 0.5, "function": 1.0}


class ScorerSection(Section):
    kind: Literal["constraints", "judge", "reward-model", "function"] = Field(
        "constraints", description="How answers are scored."
    )
    judge_model: str | None = Field(None, description="Judge model spec; None = the policy judges itself.")
    judge_samples: int = Field(3, ge=1, description="Judge samples averaged per answer.")
    reward_model: str | None = Field(None, description="Sequence-classification reward model spec.")
    function: str | None = Field(
        None,
        description="kind function: the verifier, 'package.module:function', 'path/file.py:function' or "
        "'builtin:NAME' (final_number, exact_match, normalized_match, regex_match, json_schema), called as "
        "TRL calls a reward function: fn(prompts, completions, **columns) -> list[float | None].",
    )
    pass_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Score at or above which an answer passes; default by kind: constraints 1.0 (every check "
        "passes), judge 0.7 (7/10), reward-model 0.5 (its score is a sigmoid), function 1.0.",
    )
    quality_checks: bool = Field(
        True, description="Constraints scorer also checks the answer is complete and not looping."
    )

    @model_validator(mode="after")
    def _reward_model_named(self) -> ScorerSection:
        # Checked with the config, before any model answers a prompt.
        if self.kind == "reward-model" and not self.reward_model:
            raise ValueError("kind reward-model needs reward_model (a sequence-classification model spec)")
        if self.kind == "function" and not self.function:
            raise ValueError("kind function needs function (a verifier: 'module:function' or 'file.py:function')")
        if self.function and ":" not in self.function.strip(":"):
            raise ValueError(
                f"function {self.function!r}: expected 'package.module:function', 'path/file.py:function' "
                "or 'builtin:NAME'"
            )
        return self

    @model_validator(mode="after")
    def _threshold_by_kind(self) -> ScorerSection:
        if self.pass_threshold is None:
            # Written into the config (and so its hash), so a changed kind re-decides it only when unset.
            object.__setattr__(self, "pass_threshold", DEFAULT_PASS_THRESHOLD[self.kind])
        return self


class SampleSection(Section):
    k: int = Field(8, ge=1, description="Answers sampled per train prompt.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature (> 0: rejection sampling needs variety).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Sampling seed; each answer's own seed is derived from it.")
    early_rejection: bool = Field(
        True,
        description="Stop an answer once its prefix fails a constraint it can no longer pass (constraints scorer).",
    )
    full_samples: int = Field(
        1,
        ge=0,
        description="Answers per prompt that run whole, whichever fail last: repairs (sft_data.repair) need "
        "whole answers. An answer failing a check no repair fixes is stopped anyway.",
    )
    retry_rounds: int = Field(
        0,
        ge=0,
        description="Difficulty-aware sampling: extra rounds in which only prompts without a "
        "passing answer yet are sampled again.",
    )
    retry_k: int = Field(2, ge=1, description="Answers per still-unsolved prompt in each retry round.")
    scorer: ScorerSection = Field(default_factory=ScorerSection, description="Scorer of sampled answers.")


class SFTDataSection(Section):
    tie_break: Literal["shortest", "longest", "first"] = Field(
        "shortest",
        description="Which of several best passing answers to keep (the SFT data's, and the pairs stage's "
        "chosen policy sample when pairs.k > 0).",
    )
    dedupe: bool = Field(True, description="Drop examples whose prompt and answer repeat an earlier one.")
    repair: bool = Field(
        True,
        description="A prompt with no passing answer gets a repaired one (selftune.data.repair), tagged "
        "chosen_source repair:<checks>.",
    )
    replay: float = Field(
        0.0,
        ge=0.0,
        le=4.0,
        description="From round 2 on, earlier rounds' own SFT examples added to this round's, as a "
        "share of this round's count (0 = none, 0.5 = half as many again), a seeded draw over all "
        "earlier rounds; each is tagged replay_round: <its round>. Measured on the transfer preset: "
        "0.5 lowered IFEval after round 4 (docs/gain.md).",
    )


class PairsSection(Section):
    k: int = Field(
        4,
        ge=0,
        description="Answers sampled per prompt from the SFT model for chosen/policy negatives (0 "
        "= none: pairs from the base samples and the SFT data's repairs).",
    )
    sources: dict[str, float] = Field(
        default_factory=lambda: {
            "original": 0.4,
            "policy": 0.35,
            "base": 0.25,
            "corrupt:violate-constraint": 0.15,
            "corrupt:truncate": 0.08,
            "corrupt:off-topic": 0.07,
            "corrupt:repeat": 0.05,
            "corrupt:break-format": 0.05,
        },
        description="Negative sources and their mixing weights (original = a failing answer under its own repair).",
    )

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, weights: dict[str, float]) -> dict[str, float]:

        return check_sources(weights)

    pairs_per_prompt: int = Field(2, ge=1, description="Most pairs per prompt.")
    max_pairs: int = Field(
        0, ge=0, description="Most training pairs kept (0 = all); a seeded draw keeps the source mix."
    )
    eval_prompts: int = Field(
        50, ge=0, description="Eval prompts sampled for held-out pairs (DPO's held-out reward accuracy); 0 = none."
    )
    max_similarity: float = Field(0.95, gt=0, le=1, description="Drop pairs whose two sides are at least this similar.")
    seed: int = Field(0, description="Seed of source choice and corruptions.")


EVALUATED_MODELS = ("base", "sft", "dpo", "grpo")


class LmEvalSection(Section):
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness task or group names (hellaswag, arc_easy, mmlu, ...); "
        "their data must be in the datasets cache or local (include_path) when offline.",
    )
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt; None = each task's own.")
    limit: float | None = Field(
        None,
        gt=0,
        description="Only this many documents per task (a whole number), or this share of them (below 1).",
    )
    chat_template: bool = Field(
        True, description="Wrap each request in the model's chat template (apply_chat_template), as it is used."
    )
    fewshot_as_multiturn: bool = Field(
        True, description="With the chat template, give few-shot examples as earlier user/assistant turns."
    )
    include_path: str | None = Field(
        None, description="A folder of extra task YAML files (your own tasks over local data)."
    )
    batch_size: int = Field(8, ge=1, description="Requests per forward pass.")

    @field_validator("limit")
    @classmethod
    def _whole_or_share(cls, value: float | None) -> float | None:
        if value is not None and value >= 1 and value != int(value):
            raise ValueError(f"limit {value} must be a whole number of documents, or a share below 1")
        return value

    @field_validator("tasks")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        blank = [name for name in value if not name.strip()]
        if blank or len(set(value)) != len(value):
            raise ValueError(f"task names must be non-empty and distinct: {value}")
        return value


class EvaluateSection(Section):
    models: list[str] = Field(
        default_factory=lambda: ["base", "sft", "dpo"],
        description="Models evaluated, one at a time: any of base, sft, dpo, grpo (every round's; "
        "grpo when grpo.enabled).",
    )

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in EVALUATED_MODELS]
        if unknown or not value:
            raise ValueError(f"unknown model name(s) {unknown}; choose from {', '.join(EVALUATED_MODELS)}")
        return value

    max_new_tokens: int = Field(
        256, ge=1, description="Eval answer budget of a prompt that asks for no particular length."
    )
    max_new_tokens_cap: int = Field(
        256,
        ge=1,
        description="Most tokens for an eval prompt that asks for a length (about 1.4 tokens per word asked); "
        "at max_new_tokens, every eval answer has the same budget, as benchmarks are run.",
    )
    judge: bool = Field(False, description="Also compute a judge win-rate against the base (positions swapped).")
    judge_model: str | None = Field(
        None,
        description="Judge model spec; None = the run's base model. Loaded after every evaluated model is unloaded.",
    )
    lm_eval: LmEvalSection = Field(
        default_factory=lambda: LmEvalSection(),
        description="lm-evaluation-harness tasks run on every evaluated model (extra eval).",
    )
    benchmarks: list[str] = Field(
        default_factory=list,
        description="Standard benchmarks run on every evaluated model: ifeval[=PATH], "
        "ifbench[=PATH] (reference checkers; extra benchmarks).",
    )
    benchmark_max_new_tokens: int = Field(512, ge=1, description="Longest benchmark answer, in tokens.")
    benchmark_limit: int | None = Field(
        None, ge=1, description="Only the first N prompts of each benchmark (quick checks)."
    )
    cache_answers: bool = Field(
        True,
        description="Reuse a model's greedy eval answers for the same weights, prompts and "
        "settings (cache under SELFTUNE_HOME).",
    )

    @model_validator(mode="before")
    @classmethod
    def _older_lm_eval_key(cls, data):
        """config.yaml files written before `evaluate.lm_eval` hold `lm_eval_tasks: [...]`."""
        if isinstance(data, dict) and "lm_eval_tasks" in data and "lm_eval" not in data:
            data = dict(data)
            data["lm_eval"] = {"tasks": data.pop("lm_eval_tasks")}
        return data

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, items: list[str]) -> list[str]:

        for item in items:
            parse_benchmark(item)
        return items


class TrackingSection(Section):
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers that receive every metric of the run (one tracker run per pipeline run).",
    )
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; None = a local file store in RUN/tracking.")
    project: str = Field("selftune", description="MLflow experiment / wandb project name.")


ACCELERATE_CONFIGS = ("ddp", "fsdp2", "zero2", "zero3")


class LaunchSection(Section):
    launcher: Literal["inline", "accelerate"] = Field(
        "inline",
        description="inline: SFT and DPO train in the selftune process; accelerate: in child processes "
        "started with `accelerate launch` (the selftune process keeps the run lock and writes the manifest).",
    )
    num_processes: int = Field(
        1, ge=1, description="Training processes (GPUs); effective batch = per-device batch x accumulation x this."
    )
    accelerate_config: str = Field(
        "ddp",
        description="An accelerate config: a shipped one (ddp, fsdp2, zero2, zero3; selftune/configs/accelerate/) "
        "or a path to your own YAML.",
    )

    @model_validator(mode="after")
    def _processes_need_a_launcher(self):
        if self.num_processes > 1 and self.launcher != "accelerate":
            raise ValueError(f"num_processes {self.num_processes} needs launcher: accelerate")
        if self.accelerate_config not in ACCELERATE_CONFIGS and not Path(self.accelerate_config).expanduser().is_file():
            raise ValueError(
                f"accelerate_config {self.accelerate_config!r} is neither a shipped config "
                f"({', '.join(ACCELERATE_CONFIGS)}) nor a file"
            )
        return self


class PipelineConfig(Section):
    name: str = Field(
        "demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: the folder under runs/ (no paths)."
    )
    rounds: int = Field(1, ge=1, description="Self-training rounds; round r+1 starts from round r's DPO model.")
    model: ModelSection = Field(default_factory=ModelSection, description="Base model.")
    generation: GenerationSection = Field(default_factory=GenerationSection, description="Generation backend.")
    prompts: PromptsSection = Field(default_factory=PromptsSection, description="Prompt set.")
    sample: SampleSection = Field(default_factory=SampleSection, description="Stage sample.")
    sft_data: SFTDataSection = Field(default_factory=SFTDataSection, description="Stage sft-data.")
    sft: SFTSection = Field(default_factory=SFTSection, description="Stage sft.")
    pairs: PairsSection = Field(default_factory=PairsSection, description="Stage pairs.")
    dpo: DPOSection = Field(default_factory=DPOSection, description="Stage dpo.")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="Stage grpo (optional, after dpo).")
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection, description="Stage evaluate.")
    tracking: TrackingSection = Field(default_factory=TrackingSection, description="Experiment trackers.")
    train: LaunchSection = Field(
        default_factory=LaunchSection, description="How the training stages (sft, dpo, grpo) are launched."
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_unused_seed(cls, data):
        # A top-level `seed` was accepted and never used (each stage has its own seed); config.yaml
        # files of earlier runs still carry it, so it is dropped rather than refused.
        if isinstance(data, dict) and "seed" in data:
            data = {k: v for k, v in data.items() if k != "seed"}
        return data

    @model_validator(mode="after")
    def _grpo_fits_the_run(self):
        if "grpo" in self.evaluate.models and not self.grpo.enabled:
            raise ValueError("evaluate.models lists grpo, but grpo.enabled is false: there is no grpo model")
        scorer = self.sample.scorer
        if self.grpo.enabled and scorer.kind == "judge" and scorer.judge_model is None:
            # The policy cannot judge its own rollouts while it trains: the reward needs a model of its own.
            raise ValueError(
                "grpo.enabled with sample.scorer.kind judge needs sample.scorer.judge_model: the model "
                "being trained cannot also judge its own answers"
            )
        return self
