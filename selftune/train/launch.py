"""Training in child processes started with `accelerate launch` (config `train`).

The selftune process stays the orchestrator: it holds the run lock, prepares the data (tokenized
and masked once), decides whether training resumes, merges the adapter and writes the one
manifest. Only the training itself runs in the children, one per device: every child trains on
its share of each batch (the same data order everywhere), and only the main one writes the
adapter, the log history and `result.json`. Each child also records a digest of its adapter
weights, so a run can show that every process ended with the same adapter.

    train: {launcher: accelerate, num_processes: 8, accelerate_config: zero3}

A shipped accelerate config (`ddp`, `fsdp2`, `zero2`, `zero3`, in selftune/configs/accelerate/) or
your own YAML sets how the processes share the model; `--num_processes` comes from
`train.num_processes`. Usage from a stage:

    from selftune.train.launch import run_training
    metrics = run_training(SFTJob(base, train_rows, eval_rows), cfg, out)   # inline, or in children
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

import torch

from selftune.config.sections import ACCELERATE_CONFIGS
from selftune.errors import ConfigError, SelftuneError
from selftune.models import default_device, peak_memory_bytes, reset_peak_memory
from selftune.train.jobs import GRPOJob, LaunchedJob, SFTJob, TrainingJob

# accelerate (1.6 s) is imported where a launch config is checked or a child process started.


class LaunchError(SelftuneError):
    """A training child process failed."""


def accelerate_config_path(name: str) -> Path:
    """The file of a shipped accelerate config (`ddp`, ...) or of the user's own YAML."""
    if name in ACCELERATE_CONFIGS:
        return Path(str(resources.files("selftune") / "configs" / "accelerate" / f"{name}.yaml"))
    return Path(name).expanduser()


def check_accelerate_config(name: str):
    """Load an accelerate config as `accelerate launch` will, and check what it needs is installed;
    returns accelerate's ClusterConfig. Raises ConfigError naming the file and the problem."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    path = accelerate_config_path(name)
    try:
        config = ClusterConfig.from_yaml_file(str(path))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"train.accelerate_config: {path}: {exc}") from None
    known = {kind.value for kind in DistributedType}
    kind = getattr(config.distributed_type, "value", config.distributed_type)
    if kind not in known:
        raise ConfigError(f"train.accelerate_config: {path}: distributed_type {kind!r} is not one of {sorted(known)}")
    if kind in ("FSDP", "DEEPSPEED"):
        import accelerate

        if not torch.cuda.is_available():
            # accelerate turns FSDP and DeepSpeed on only for GPU-like devices: CPU processes would
            # silently train as plain DDP under a config that says otherwise.
            raise ConfigError(
                f"train.accelerate_config: {path} uses {kind}, which accelerate {accelerate.__version__} runs "
                "only on GPUs (CPU processes would train as plain DDP); on this machine use ddp"
            )
    if kind == "DEEPSPEED":
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"train.accelerate_config: {path} uses DeepSpeed: pip install 'selftune[gpu]'")
    return config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(launch, job_file: Path) -> list[str]:
    """The `accelerate launch` command line that runs `selftune.worker` on `job_file`."""

    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--config_file", str(accelerate_config_path(launch.accelerate_config))]
    command += ["--num_processes", str(launch.num_processes), "--main_process_port", str(_free_port())]
    if not torch.cuda.is_available():
        # No GPUs: the processes share this machine's cores (gloo for the collectives).
        threads = max(1, (os.cpu_count() or 1) // launch.num_processes)
        command += ["--num_cpu_threads_per_process", str(threads)]
    return command + ["-m", "selftune.worker", str(job_file)]


def train_here(job: TrainingJob, cfg, out: Path, *, progress=None, phase_progress=None) -> dict:
    """Run `job` in this process (inline, or as one `accelerate launch` child); returns its metrics."""
    # The training modules subclass transformers' Trainer at module level, and importing it takes
    # ~6 s (measured on the development CPU): they load here, when a stage trains, so that
    # `import selftune`, `selftune --help` and the stages that do not train never pay for it.
    # This process's peak while it trains, beside the stage's estimate (`check_training_memory`).
    device = default_device()
    reset_peak_memory(device)
    if isinstance(job, SFTJob):
        from selftune.train.sft import train_sft

        metrics = train_sft(cfg, out, job, progress=progress, phase_progress=phase_progress)
    elif isinstance(job, GRPOJob):
        from selftune.train.grpo import train_grpo

        metrics = train_grpo(cfg, out, job, progress=progress)
    else:
        from selftune.train.dpo import train_dpo

        metrics = train_dpo(cfg, out, job, progress=progress, phase_progress=phase_progress)
    return {**metrics, "peak_memory_gib": round(peak_memory_bytes(device) / 2**30, 3)}


def run_training(job: TrainingJob, cfg, out: Path, *, progress=None, phase_progress=None) -> dict:
    """Train `job` in this process (`train.launcher: inline`) or in `train.num_processes` children
    under `accelerate launch` (each runs `train_here` through `selftune.worker` on the job written
    to `out/launch/job.json`). Returns the main process's training metrics."""
    if cfg.train.launcher == "inline":
        return train_here(job, cfg, out, progress=progress, phase_progress=phase_progress)
    check_accelerate_config(cfg.train.accelerate_config)
    folder = out / "launch"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):  # a result of an earlier attempt must not pass for this one
        old.unlink()
    job_file = folder / "job.json"
    LaunchedJob(job, config=cfg.whole().model_dump(mode="json"), out=out).write(job_file)
    command = launch_command(cfg.train, job_file)
    completed = subprocess.run(command, check=False)
    error = folder / "error.json"
    if error.is_file():
        raise LaunchError(json.loads(error.read_text())["message"])
    if completed.returncode != 0:
        if completed.returncode in (-2, 130):
            raise KeyboardInterrupt
        raise LaunchError(
            f"{job.stage}: the {cfg.train.num_processes} training processes failed (exit status "
            f"{completed.returncode}; their output is above): {' '.join(command)}"
        )
    return json.loads((folder / "result.json").read_text())


def rank_digests(out: Path) -> dict[int, str]:
    """Each training process's digest of its final adapter weights (written by `selftune.worker`)."""
    return {
        int(path.stem.split("-")[1]): json.loads(path.read_text())["adapter_sha256"]
        for path in sorted((out / "launch").glob("rank-*.json"))
    }
