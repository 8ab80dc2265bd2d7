"""Stage `report`: report.md and a self-contained report.html for a run
(`selftune.reporting.document`), and the run's `report` link to the last reported round.

Usage:
    selftune report runs/demo
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from selftune.config import PipelineConfig
from selftune.reporting.document import evaluation_of, lineage_rows, write_report
from selftune.run.folder import Run
from selftune.run.plan import fresh_prompts
from selftune.run.spec import StageSpec

# Everything it shows comes from its inputs, but for which stages the lineage table lists: the
# plan, which the prompts settings shape (each round's own prompts).
REPORT_STAGE = StageSpec("report", output="html", reads=("prompts.fresh_each_round", "prompts.source", "grpo.enabled"))


def report_stage(run: Run, cfg: PipelineConfig, *, round_number: int = 1) -> Path:
    """Write the report into the report stage's folder; `RUN/report` links to it, so the report's
    path stays `RUN/report/report.html` whichever round it reports."""
    results_path = run.output_of("evaluate", "results", round_number=round_number)
    answers_path = run.output_of("evaluate", "answers", round_number=round_number)
    inputs = {"results": results_path, "answers": answers_path}
    histories = {}  # training curves, found through the training stages' manifests
    for r in range(1, round_number + 1):
        for stage in ("sft", "dpo", "grpo"):
            path = run.optional_output(stage, "log_history", round_number=r)
            if path is not None:
                histories[stage if r == 1 else f"{stage}-r{r}"] = path
                inputs[f"log_history_{stage}_r{r}"] = path
    start = run.begin(REPORT_STAGE, cfg, inputs=inputs, round_number=round_number)
    if start.reused:
        _link_report(run, start.reused.parent)
        return run.root / "report" / "report.html"
    results, answers, prompts = evaluation_of(run, round_number)
    history = {name: json.loads(path.read_text()) for name, path in histories.items()}
    with start as stage:
        files = write_report(
            stage.dir,
            title=f"selftune report: {run.root.name}",
            results=results,
            answers=answers,
            prompts=prompts,
            history_by_stage=history,
            lineage=lineage_rows(run, round_number, fresh=fresh_prompts(cfg), grpo=cfg.grpo.enabled),
        )
        stage.add_output("html", files["html"])
        stage.add_output("md", files["md"])
    _link_report(run, stage.dir)
    return run.root / "report" / "report.html"


def _link_report(run, stage_dir: Path) -> None:
    """Point `RUN/report` at the report stage's folder (replaced atomically; a folder left there by
    an older version is moved aside, not deleted)."""

    link = run.root / "report"
    target = os.path.relpath(stage_dir, run.root)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() and not link.is_symlink():
        link.rename(run.root / f"report.old-{int(time.time())}")
    scratch = run.root / f".report.link-{os.getpid()}"
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(target, target_is_directory=True)
    os.replace(scratch, link)
