"""Training stages in several processes under `accelerate launch` (issue 18), on this CPU (gloo).

The shipped accelerate configs are checked in `make test`; the two-process runs take minutes and
carry the `launch` marker (`make test-launch`, run by CI after the default suite).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from selftune.config.loading import load_config
from selftune.config.sections import ACCELERATE_CONFIGS
from selftune.errors import ConfigError
from selftune.train.launch import accelerate_config_path, check_accelerate_config, launch_command, rank_digests

SELFTUNE = [sys.executable, "-c", "from selftune.cli import main; main()"]
# Enough steps for a loss curve: 3 SFT epochs, 2 DPO epochs; no warm-up, so the first step
# already moves the adapter. bf16 autocast off: whether 'auto' turns it on depends on the CPU, and
# the one- against two-process comparison is made in fp32.
COMMON = [
    "--preset",
    "tiny",
    "--set",
    "sft.bf16=false",
    "--set",
    "dpo.bf16=false",
    "--set",
    "sft.epochs=3",
    "--set",
    "sft.warmup_ratio=0",
    "--set",
    "dpo.epochs=2",
    "--set",
    "dpo.warmup_ratio=0",
    "--set",
    "sft.per_device_batch_size=2",
    "--set",
    "dpo.per_device_batch_size=2",
]
TWO_PROCESSES = ["--set", "train.launcher=accelerate", "--set", "train.num_processes=2"]
# One process with the same effective batch: 2 per device x 2 accumulation x 1 process.
ONE_PROCESS = ["--set", "sft.gradient_accumulation=2", "--set", "dpo.gradient_accumulation=2"]


@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_every_shipped_accelerate_config_loads_as_accelerate_reads_it(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = accelerate_config_path(name)
    config = ClusterConfig.from_yaml_file(str(path))  # refuses unknown keys
    header = path.read_text().split("\ncompute_environment")[0]
    assert header.startswith("# ") and "Use it" in header  # each config says when to use it
    kind = {"ddp": "MULTI_GPU", "fsdp2": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[name]
    assert config.distributed_type == kind
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    import importlib.util

    import torch

    if kind in ("FSDP", "DEEPSPEED") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=f"uses {kind}, which accelerate .* runs only on GPUs"):
            check_accelerate_config(name)
    elif kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="uses DeepSpeed: pip install 'selftune\\[gpu\\]'"):
            check_accelerate_config(name)
    else:
        check_accelerate_config(name)


def test_a_broken_accelerate_config_is_named(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_processes": 2, "nosuch_key": 1}))
    with pytest.raises(ConfigError, match=f"train.accelerate_config: {own}"):
        check_accelerate_config(str(own))


def test_launch_settings_are_checked_with_the_config():
    with pytest.raises(ConfigError, match="num_processes 2 needs launcher: accelerate"):
        load_config("tiny", overrides=["train.num_processes=2"])
    with pytest.raises(ConfigError, match="neither a shipped config"):
        load_config("tiny", overrides=["train.launcher=accelerate", "train.accelerate_config=nosuch"])


def test_the_launch_command_runs_the_worker_with_the_processes_and_config(tmp_path):
    cfg = load_config("tiny", overrides=["train.launcher=accelerate", "train.num_processes=3"])
    command = launch_command(cfg.train, tmp_path / "job.json")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "3"
    assert Path(command[command.index("--config_file") + 1]) == accelerate_config_path("ddp")
    assert command[-3:] == ["-m", "selftune.worker", str(tmp_path / "job.json")]


def _train_losses(stage_dir: Path) -> list[float]:
    history = json.loads((stage_dir / "log_history.json").read_text())
    return [row["loss"] for row in history if "loss" in row and "eval_loss" not in row]


def _selftune(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([*SELFTUNE, *map(str, args)], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.launch
def test_two_processes_train_sft_and_dpo_like_one_process_with_the_same_effective_batch(tmp_path, tiny_model_dir):
    two = tmp_path / "two"
    _selftune(
        ["run", *COMMON, *TWO_PROCESSES, "--set", f"model.spec={tiny_model_dir}", "--run-dir", two, "--until", "dpo"]
    )
    for stage in ("sft", "dpo"):
        folder = two / "round-1" / stage
        metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
        assert metrics["processes"] == 2 and metrics["effective_batch"] == 4
        digests = rank_digests(folder)
        assert sorted(digests) == [0, 1] and digests[0] == digests[1]  # the same adapter on both ranks
    # one manifest per stage: the processes wrote none of their own
    manifests = sorted(p.parent.relative_to(two).as_posix() for p in two.rglob("manifest.json"))
    assert manifests == [f"round-1/{s}" for s in ("dpo", "pairs", "prompts", "sample", "sft", "sft-data")]
    assert rank_digests(two / "round-1" / "sft")[0] != rank_digests(two / "round-1" / "dpo")[0]

    # The same stages in one process, on the same inputs, with the same effective batch: SFT on 9
    # examples (8 train, 1 held out; equal lengths, so the length-grouped sampler orders them alike
    # in any number of processes), DPO on 16 pairs from the same merged SFT model. Counts the
    # global batch of 4 divides: otherwise DDP pads its last batch by repeating examples
    # (accelerate's even_batches), and that step differs from one process's.
    from tests.test_pairs_dpo import write_pairs

    pairs = write_pairs(tmp_path / "pairs.jsonl", count=16)
    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {i}: name a colour."},
                        {"role": "assistant", "content": f"Answer {i}: blue, green and a little red."},
                    ]
                }
            )
            + "\n"
            for i in range(9)
        )
    )
    one = tmp_path / "one"
    shutil.copytree(two, one)
    _selftune(["dpo", "--run", two, "--pairs", pairs, *COMMON[2:], *TWO_PROCESSES])
    _selftune(["sft", "--run", two, "--data", sft_data, *COMMON[2:], *TWO_PROCESSES])
    settings = [*COMMON[2:], *ONE_PROCESS, "--set", "train.launcher=inline", "--set", "train.num_processes=1"]
    _selftune(["dpo", "--run", one, "--pairs", pairs, *settings])  # from the same merged SFT model
    _selftune(["sft", "--run", one, "--data", sft_data, *settings])
    assert json.loads((two / "round-1" / "sft" / "manifest.json").read_text())["metrics"]["train_examples"] == 8
    digests = rank_digests(two / "round-1" / "sft")
    assert digests[0] == digests[1]  # the same adapter on both ranks after DDP
    for stage, tolerance in (("sft", 1e-3), ("dpo", 1e-3)):
        ours, theirs = _train_losses(one / "round-1" / stage), _train_losses(two / "round-1" / stage)
        assert len(ours) == len(theirs) >= 2
        assert ours == pytest.approx(theirs, rel=tolerance), (stage, ours, theirs)
        worst = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))
        print(f"{stage}: {len(ours)} steps, largest relative loss difference 1 vs 2 processes {worst:.1e}")
        metrics = json.loads((one / "round-1" / stage / "manifest.json").read_text())["metrics"]
        assert metrics["processes"] == 1 and metrics["effective_batch"] == 4


KILLER = """
import os, signal
# The first process (selftune run, in a session of its own) names its process group for its
# children; the main training process kills that group and its own (torch's launcher gives the
# training processes their own) after its Nth checkpoint: the whole run at once, as a crash would.
os.environ.setdefault("SELFTUNE_TEST_GROUP", str(os.getpgid(0)))
after = int(os.environ.get("SELFTUNE_TEST_KILL_AFTER_CHECKPOINT", "0"))
if after and os.environ.get("RANK") == "0":
    import transformers
    save, saved = transformers.Trainer._save_checkpoint, []
    def saving(self, *args, **kwargs):
        result = save(self, *args, **kwargs)
        saved.append(1)
        if len(saved) == after:
            os.killpg(int(os.environ["SELFTUNE_TEST_GROUP"]), signal.SIGKILL)
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return result
    transformers.Trainer._save_checkpoint = saving
"""


@pytest.mark.launch
def test_a_killed_two_process_training_stage_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILLER)
    args = ["run", *COMMON, *TWO_PROCESSES, "--set", f"model.spec={tiny_model_dir}", "--set", "sft.save_steps=1"]
    killed = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
        "SELFTUNE_TEST_KILL_AFTER_CHECKPOINT": "2",
    }
    started = time.perf_counter()
    crashed = subprocess.run(
        [*SELFTUNE, *map(str, [*args, "--run-dir", killed, "--until", "sft"])],
        env=env,
        start_new_session=True,
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    sft = killed / "round-1" / "sft"
    assert (
        not (sft / "manifest.json").exists() or json.loads((sft / "manifest.json").read_text())["status"] != "complete"
    )
    assert (sft / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    _selftune([*args, "--run-dir", killed, "--until", "sft"])
    metrics = json.loads((sft / "manifest.json").read_text())["metrics"]

    whole = tmp_path / "whole"
    _selftune([*args, "--run-dir", whole, "--until", "sft"])
    uninterrupted = json.loads((whole / "round-1" / "sft" / "manifest.json").read_text())["metrics"]
    assert metrics["resumed"] is True and metrics["steps"] == uninterrupted["steps"] > 2
    assert _train_losses(sft) == pytest.approx(_train_losses(whole / "round-1" / "sft"), rel=1e-4)
    assert rank_digests(sft) == rank_digests(whole / "round-1" / "sft")
    print(f"killed, resumed and compared in {time.perf_counter() - started:.0f}s")


@pytest.mark.launch
def test_fsdp_in_two_cpu_processes_trains_sft_like_ddp(tmp_path, tiny_model_dir):
    """FSDP2 (the shipped config, without bf16) sharding the model across two CPU processes, its
    losses equal to DDP's. accelerate 1.15 enables FSDP only for GPU-like devices, so on a CPU-only
    machine this skips with that reason (and selftune refuses such a config rather than train DDP
    under an FSDP name)."""
    cpu_fsdp = tmp_path / "fsdp2-cpu.yaml"
    cpu_fsdp.write_text(
        accelerate_config_path("fsdp2").read_text().replace("mixed_precision: bf16", 'mixed_precision: "no"')
    )
    try:
        check_accelerate_config(str(cpu_fsdp))
    except ConfigError as exc:
        pytest.skip(f"FSDP in CPU processes is not possible here: {exc}")
    args = ["run", *COMMON, *TWO_PROCESSES, "--set", f"model.spec={tiny_model_dir}", "--until", "sft"]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _selftune([*args, "--run-dir", ddp])
    _selftune([*args, "--run-dir", fsdp, "--set", f"train.accelerate_config={cpu_fsdp}"])
    ours, theirs = _train_losses(fsdp / "round-1" / "sft"), _train_losses(ddp / "round-1" / "sft")
    assert len(ours) == len(theirs) >= 2 and ours == pytest.approx(theirs, rel=1e-3), (ours, theirs)
    distributed = {
        name: json.loads((run / "round-1" / "sft" / "manifest.json").read_text())["metrics"]["distributed"]
        for name, run in (("ddp", ddp), ("fsdp", fsdp))
    }
    assert distributed == {"ddp": "MULTI_CPU", "fsdp": "FSDP"}
    digests = rank_digests(fsdp / "round-1" / "sft")
    assert digests[0] == digests[1]
    print(
        f"FSDP vs DDP: {len(ours)} steps, largest relative loss difference "
        f"{max(abs(a - b) / abs(b) for a, b in zip(ours, theirs)):.1e}"
    )


@pytest.mark.launch
def test_two_processes_train_grpo_with_groups_split_between_them(tmp_path, tiny_model_dir):
    # 2 answers per device x 2 accumulation x 2 processes: each group of 4 answers spans both
    # processes, the second continuing the first's sample indices.
    run_dir = tmp_path / "two"
    grpo = ["grpo.enabled=true", "grpo.bf16=false", "grpo.per_device_batch_size=2", "grpo.learning_rate=1e-2"]
    settings = [item for s in (f"model.spec={tiny_model_dir}", *grpo) for item in ("--set", s)]
    _selftune(["run", *COMMON, *TWO_PROCESSES, *settings, "--run-dir", str(run_dir), "--until", "grpo"])
    folder = run_dir / "round-1" / "grpo"
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    assert metrics["processes"] == 2 and metrics["effective_batch"] == 8 and metrics["steps"] == 2
    digests = rank_digests(folder)
    assert sorted(digests) == [0, 1] and len(set(digests.values())) == 1  # one adapter in both processes
    assert (folder / "merged").is_dir()


@pytest.mark.launch
def test_grpo_in_two_processes_rewards_with_a_verifier_file(tmp_path, tiny_model_dir):
    # The verifier is imported by reference in each training process; every call logs its process.
    calls = tmp_path / "calls.log"
    verifier = tmp_path / "verify.py"
    verifier.write_text(
        "import os\n"
        "def verify(prompts, completions, answer, **kw):\n"
        f"    open({str(calls)!r}, 'a').write(f'{{os.getpid()}} {{len(completions)}}\\n')\n"
        "    return [float(len(c[0]['content']) % 2 == 0) for c in completions]\n"
    )
    run_dir = tmp_path / "run"
    grpo = ["grpo.enabled=true", "grpo.bf16=false", "grpo.per_device_batch_size=2", "grpo.learning_rate=1e-2"]
    scorer = [
        "prompts.source=builtin:arithmetic",
        "sample.scorer.kind=function",
        f"sample.scorer.function={verifier}:verify",
    ]
    settings = [item for s in (f"model.spec={tiny_model_dir}", *grpo, *scorer) for item in ("--set", s)]
    _selftune(["run", *COMMON, *TWO_PROCESSES, *settings, "--run-dir", str(run_dir), "--until", "grpo"])
    manifest = json.loads((run_dir / "round-1" / "grpo" / "manifest.json").read_text())
    assert manifest["metrics"]["processes"] == 2 and 0 <= manifest["metrics"]["reward_mean"] <= 1
    assert manifest["inputs"]["verifier"]["path"].endswith("verify.py")
    pids = {line.split()[0] for line in calls.read_text().splitlines()}
    assert len(pids) >= 3  # the orchestrator (checks, sample, pairs) and both training processes
