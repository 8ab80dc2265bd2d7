"""Stage `prompts`: the run's prompt set, built in (`selftune.data.prompts`) or imported.

Usage:
    selftune prompts build --run runs/demo [--source my.jsonl]
"""

from __future__ import annotations

from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.arithmetic import SOURCE as ARITHMETIC
from selftune.data.arithmetic import build_arithmetic_prompts
from selftune.data.prompts import BUILTIN_SOURCES, build_prompts, import_prompts
from selftune.run.files import write_jsonl
from selftune.run.folder import Run
from selftune.run.spec import StageSpec

# The answer caps decide which lengths a prompt may ask for (none longer than its answer holds).
PROMPTS_STAGE = StageSpec(
    "prompts", output="prompts", reads=("prompts", "generation.max_new_tokens_cap", "evaluate.max_new_tokens_cap")
)


def prompts_stage(run: Run, cfg: PipelineConfig, *, source: Path | None = None, round_number: int = 1) -> Path:
    """Stage `prompts`: write the run's prompt set (built-in, or imported from `source` /
    `cfg.prompts.source`) to round-1/prompts/prompts.jsonl; in a later round, that round's fresh
    built-in train prompts (`prompts.fresh_each_round`) to round-R/prompts/prompts.jsonl."""

    cfg = PROMPTS_STAGE.view(cfg)
    builtin = cfg.prompts.source in BUILTIN_SOURCES
    source = Path(source) if source else (None if builtin else Path(cfg.prompts.source))
    # An imported file is read and validated in full before the stage starts: a bad row leaves
    # the run's earlier prompts (and their manifest) as they were.
    imported = import_prompts(source) if source else None
    inputs = {"source": source} if source else {}
    start = run.begin(PROMPTS_STAGE, cfg, inputs=inputs, round_number=round_number)
    if start.reused:
        return start.reused
    with start as stage:
        if imported is not None:
            records = imported
        elif cfg.prompts.source == ARITHMETIC:
            p = cfg.prompts
            records = build_arithmetic_prompts(p.n_train, p.n_eval, p.seed, round_number=round_number)
        else:
            p = cfg.prompts
            records = build_prompts(
                p.n_train,
                p.n_eval,
                p.max_constraints,
                p.seed,
                p.type_weights,
                long_form_share=p.long_form_share,
                round_number=round_number,
                answer_cap=cfg.generation.max_new_tokens_cap,
                eval_answer_cap=cfg.evaluate.max_new_tokens_cap,
            )
        out = stage.dir / "prompts.jsonl"
        write_jsonl(out, records)
        stage.add_output("prompts", out)
        stage.metrics.update(
            train=sum(r.split == "train" for r in records),
            eval=sum(r.split == "eval" for r in records),
        )
    return out
