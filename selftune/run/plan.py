"""The stages of a run of N rounds, in order: what `selftune run` walks, and what the report, the
model card and the trackers read back.

    prompts ─► [round r: sample ─► sft-data ─► sft ─► pairs ─► dpo (─► grpo)] x rounds ─► evaluate ─► report

grpo runs only when `grpo.enabled`.
"""

from __future__ import annotations

from dataclasses import dataclass

from selftune.config import PipelineConfig
from selftune.data.prompts import BUILTIN_SOURCES
from selftune.errors import ConfigError
from selftune.run.folder import Run
from selftune.run.manifest import Manifest, readable_manifest

ROUND_STAGES = ["sample", "sft-data", "sft", "pairs", "dpo"]


STAGES = ["prompts", *ROUND_STAGES, "evaluate", "report"]
OPTIONAL_STAGES = ["grpo"]  # after dpo in each round, when enabled


@dataclass(frozen=True)
class Step:
    stage: str
    round_number: int

    @property
    def label(self) -> str:
        return f"round-{self.round_number}/{self.stage}"


def fresh_prompts(cfg: PipelineConfig) -> bool:
    """Whether each round after the first has train prompts of its own (built-in prompts only)."""
    return cfg.prompts.fresh_each_round and cfg.prompts.source in BUILTIN_SOURCES


def prompts_round(cfg: PipelineConfig, round_number: int) -> int:
    """The round whose prompts stage holds round `round_number`'s train prompts."""
    return round_number if fresh_prompts(cfg) else 1


def plan(
    rounds: int,
    *,
    fresh: bool = False,
    grpo: bool = False,
    from_stage: str | None = None,
    until_stage: str | None = None,
) -> list[tuple[Step, bool]]:
    """The steps to take, in order, each with `forced` (at or after `from_stage`: rerun whatever
    its manifest says). `fresh`: rounds after the first build prompts of their own first. `grpo`:
    each round ends with the grpo stage. `until_stage` stops after its last occurrence."""
    known = STAGES + OPTIONAL_STAGES
    for name in (from_stage, until_stage):
        if name is not None and name not in known:
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(known)}")
        if name in OPTIONAL_STAGES and not grpo:
            raise ConfigError(f"stage {name!r} runs only with grpo.enabled: true")
    steps = [Step("prompts", 1)]
    for r in range(1, rounds + 1):
        steps += [Step("prompts", r)] if fresh and r > 1 else []
        steps += [Step(stage, r) for stage in ROUND_STAGES + (["grpo"] if grpo else [])]
    steps += [Step("evaluate", rounds), Step("report", rounds)]
    if until_stage is not None:
        last = max(k for k, step in enumerate(steps) if step.stage == until_stage)
        steps = steps[: last + 1]
    first_forced = next((k for k, step in enumerate(steps) if step.stage == from_stage), len(steps))
    return [(step, k >= first_forced) for k, step in enumerate(steps)]


def stage_manifests(
    run: Run, rounds: int, *, fresh: bool = False, grpo: bool = False
) -> list[tuple[Step, Manifest | None]]:
    """Each stage of the plan for `rounds` (`fresh`: with each round's prompts; `grpo`: with each
    round's grpo stage) with its manifest
    (None when it has not run, or its manifest cannot be read): the run's lineage as the report,
    the model card and the trackers show it. Folders that are not stages of the plan are not read."""
    steps = plan(rounds, fresh=fresh, grpo=grpo)
    return [(step, readable_manifest(run.stage_dir(step.stage, step.round_number))) for step, _ in steps]
