"""GRPO rollouts by selftune's engine against GRPOTrainer's own generation, side by side in one run.

Both rows train the same fresh LoRA on the same model and prompts for the same optimizer steps
(`selftune.train.grpo.train_grpo`, `grpo.rollouts` engine or trl); only who writes the answers
differs. Rows run one after the other in this process (never two heavy jobs at once) and in
alternating order over `--repeats`, so drift of the machine falls on both. Prints seconds per
step, rollout seconds (engine row), mean answer length and reward, and the ratio trl / engine.

    python bench/grpo.py --model runs/transfer/round-4/dpo/merged \
        --prompts runs/transfer/round-4/prompts/prompts.jsonl --prompts-n 8
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from selftune.config.loading import load_config
from selftune.data.prompts import answer_budgets
from selftune.data.records import read_records
from selftune.train.grpo import train_grpo
from selftune.train.jobs import GRPOJob


def one_row(rollouts: str, args, prompts) -> dict:
    cfg = load_config(
        args.preset,
        overrides=[
            "grpo.enabled=true",
            f"grpo.rollouts={rollouts}",
            f"grpo.num_generations={args.group}",
            f"grpo.per_device_batch_size={args.group}",
            "grpo.gradient_accumulation=2",
            "grpo.report_to=[]",
            "grpo.save_steps=100000",
        ],
    )
    budgets = answer_budgets(prompts, cfg.generation.max_new_tokens, cfg.generation.max_new_tokens_cap)
    job = GRPOJob(dpo_model=args.model, prompts=[p.model_dump(mode="json") for p in prompts], budgets=budgets)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        metrics = train_grpo(cfg, Path(out), job)
        seconds = time.perf_counter() - started
    return {
        "seconds_per_step": seconds / metrics["steps"],
        "rollout_seconds_per_step": (metrics["rollout_seconds"] or 0) / metrics["steps"],
        "length": metrics.get("completion_length"),
        "reward": metrics.get("reward_mean"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="The merged DPO model GRPO starts from.")
    parser.add_argument("--prompts", required=True, type=Path, help="A prompts file (its train split).")
    parser.add_argument("--prompts-n", type=int, default=8, help="Train prompts drawn (seeded).")
    parser.add_argument("--group", type=int, default=8, help="Answers per prompt.")
    parser.add_argument("--preset", default="transfer", help="Preset whose generation caps apply.")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    prompts = [p for p in read_records(args.prompts, "prompts") if p.split == "train"]
    prompts = random.Random(0).sample(prompts, min(args.prompts_n, len(prompts)))
    rows: dict[str, list[dict]] = {"engine": [], "trl": []}
    for repeat in range(args.repeats):
        for rollouts in ("engine", "trl") if repeat % 2 == 0 else ("trl", "engine"):
            rows[rollouts].append(one_row(rollouts, args, prompts))
    print(f"{len(prompts)} prompts x {args.group} answers, 2 prompts per optimizer step, {args.repeats} repeat(s)")
    print(f"{'rollouts':10} {'s/step':>8} {'rollout s/step':>15} {'answer tokens':>14} {'reward':>7}")
    mean = {}
    for name, found in rows.items():
        mean[name] = statistics.mean(r["seconds_per_step"] for r in found)
        rollout = statistics.mean(r["rollout_seconds_per_step"] for r in found)
        length = statistics.mean(r["length"] or 0 for r in found)
        reward = statistics.mean(r["reward"] or 0 for r in found)
        shown = f"{rollout:15.1f}" if name == "engine" else f"{'-':>15}"
        print(f"{name:10} {mean[name]:8.1f} {shown} {length:14.1f} {reward:7.3f}")
    print(f"trl / engine seconds per step: {mean['trl'] / mean['engine']:.2f}x")


if __name__ == "__main__":
    main()
