"""One training process under `accelerate launch` (see `selftune.launch`): reads the job the
orchestrating selftune process wrote, trains, and on the main process writes `result.json` (or
`error.json` with the one-sentence message of a selftune error). Every process writes
`rank-K.json` with a digest of its final adapter weights (`selftune.training.save_adapter`).

    python -m accelerate.commands.launch --num_processes 2 -m selftune.worker RUN/round-1/sft/launch/job.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(job_file: str) -> None:
    from accelerate import PartialState

    from selftune import dpo, sft
    from selftune.config import PipelineConfig
    from selftune.errors import SelftuneError

    job = json.loads(Path(job_file).read_text())
    folder = Path(job_file).parent
    state = PartialState()
    spec, train = {"sft": (sft.SFT_STAGE, sft.train_sft), "dpo": (dpo.DPO_STAGE, dpo.train_dpo)}[job["stage"]]
    cfg = spec.view(PipelineConfig.model_validate(job["config"]))  # the stage reads what it declares, here too
    out = Path(job["out"])
    progress = None
    if state.is_main_process and sys.stderr.isatty():
        from selftune.cli import TrainingProgress

        progress = TrainingProgress(job["stage"].upper())
    try:
        metrics = train(cfg, out, job, progress=progress)
    except SelftuneError as exc:
        if state.is_main_process:
            (folder / "error.json").write_text(json.dumps({"message": str(exc)}))
        raise SystemExit(1) from None
    if state.is_main_process:
        (folder / "result.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1])
