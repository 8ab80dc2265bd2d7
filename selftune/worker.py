"""One training process under `accelerate launch` (see `selftune.train.launch`): reads the job the
orchestrating selftune process wrote, trains, and on the main process writes `result.json` (or
`error.json` with the one-sentence message of a selftune error). Every process writes
`rank-K.json` with a digest of its final adapter weights (`selftune.train.toolkit.save_adapter`).

    python -m accelerate.commands.launch --num_processes 2 -m selftune.worker RUN/round-1/sft/launch/job.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import PartialState

from selftune.config import PipelineConfig
from selftune.errors import SelftuneError
from selftune.progress import TrainingProgress
from selftune.stages.dpo import DPO_STAGE
from selftune.stages.grpo import GRPO_STAGE
from selftune.stages.sft import SFT_STAGE
from selftune.train.jobs import LaunchedJob
from selftune.train.launch import train_here

SPECS = {"sft": SFT_STAGE, "dpo": DPO_STAGE, "grpo": GRPO_STAGE}


def main(job_file: str) -> None:
    launched = LaunchedJob.read(Path(job_file))
    job = launched.job
    folder = Path(job_file).parent
    state = PartialState()
    cfg = SPECS[job.stage].view(PipelineConfig.model_validate(launched.config))  # reads what it declares, here too
    progress = None
    if state.is_main_process and sys.stderr.isatty():
        progress = TrainingProgress(job.stage.upper())
    try:
        metrics = train_here(job, cfg, launched.out, progress=progress)
    except SelftuneError as exc:
        if state.is_main_process:
            (folder / "error.json").write_text(json.dumps({"message": str(exc)}))
        raise SystemExit(1) from None
    if state.is_main_process:
        (folder / "result.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1])
