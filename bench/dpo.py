"""Our DPO against TRL's DPOTrainer with its default settings, side by side in one run.

Each trainer runs with its own defaults on the same merged SFT model, the same pairs, the same
fresh LoRA shape and the same effective batch (8 = TRL's default per-device batch, no
accumulation): ours trains 1 epoch at LR 5e-5 (selftune's `DPOConfig` defaults, reference pass
included in its time), TRL's 3 epochs at LR 1e-6. Prints wall time per epoch, peak memory (RSS
high-water mark), and held-out reward accuracy and margin measured the same way for all rows:
log-probs of the held-out pairs under the trained adapter vs the adapter disabled (the SFT
reference), masked by `selftune.train.masking`. Each row runs in a fresh process, so its peak memory is
its own (an allocator keeps freed memory, which would count against the next row).

Rows:
- `selftune dpo <config>`: one per `--ours` (default: `defaults`; a preset name such as `demo`
  takes that preset's DPO settings) at effective batch 8, dtype as `auto` picks it; `--epochs`
  overrides every such row's epochs.
- `TRL defaults, our dtype`: every DPOConfig default except mixed precision, which follows ours
  (on a CPU without native bf16 units `auto` picks fp32; on a bf16 GPU both run bf16).
- `TRL defaults as shipped`: DPOConfig untouched (bf16=True). On a CPU without native bf16 units
  that precision is emulated and a step takes minutes, so this row times `--shipped-steps` steps
  and reports steps-per-epoch x seconds-per-step (marked "extrapolated"); 0 skips it, -1 runs
  every epoch.

    python bench/dpo.py --model runs/demo/round-1/sft/merged \
        --pairs runs/demo/round-1/pairs/pairs.jsonl --eval-pairs runs/demo/round-1/pairs/eval_pairs.jsonl \
        --ours defaults --ours demo
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from selftune.config.loading import load_config
from selftune.data.records import read_records
from selftune.models import load_model, load_tokenizer, peak_memory_bytes, reset_peak_memory
from selftune.train.logprobs import PairCollator, sequence_logps, tokenize_pairs
from selftune.train.toolkit import lora_config


@torch.no_grad()
def held_out(model, tokenizer, eval_rows, beta: float) -> tuple[float, float]:
    model.eval()
    collator = PairCollator(tokenizer.pad_token_id)
    wins, margins = 0, []
    for start in range(0, len(eval_rows), 8):
        batch = collator(eval_rows[start : start + 8])
        policy, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        with model.disable_adapter():
            reference, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        half = policy.shape[0] // 2
        margin = beta * ((policy[:half] - reference[:half]) - (policy[half:] - reference[half:]))
        wins += int((margin > 0).sum())
        margins += margin.tolist()
    return wins / len(margins), sum(margins) / len(margins)


def bench_tokenizer(model_spec):
    tokenizer = load_tokenizer(model_spec)
    tokenizer.padding_side = "right"
    return tokenizer


def in_fresh_process(function, *args, **kwargs):
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def run_ours(model_spec, pairs, eval_rows, work: Path, *, preset: str | None, epochs: float | None):
    from peft import get_peft_model
    from transformers import set_seed

    from selftune.train.dpo import PairTrainer, reference_logps
    from selftune.train.logprobs import prompt_sharing_holds
    from selftune.train.toolkit import as_dataset, training_arguments

    overrides = [
        "dpo.report_to=[]",
        "dpo.save_steps=100000",
        "dpo.per_device_batch_size=8",
        "dpo.gradient_accumulation=1",
    ]
    cfg = load_config(preset, overrides=overrides + ([f"dpo.epochs={epochs}"] if epochs else []))
    epochs = cfg.dpo.epochs
    tokenizer = bench_tokenizer(model_spec)
    rows, _ = tokenize_pairs(
        tokenizer, pairs, max_length=cfg.dpo.max_length, response_separator=None, max_drop_share=1.0, source="bench"
    )
    args = training_arguments(cfg.dpo, work / "ours", has_eval=False, device="cpu")
    model = load_model(model_spec, dtype="float32")
    set_seed(0)
    model = get_peft_model(model, lora_config(cfg.dpo.lora))
    collator = PairCollator(tokenizer.pad_token_id)
    reset_peak_memory("cpu")
    start = time.perf_counter()
    share = cfg.dpo.share_prompts and prompt_sharing_holds(model, rows, collator)  # as the stage decides
    reference_logps(model, rows, collator, 16, args.bf16, share_prompts=share)  # part of our epoch's cost
    trainer = PairTrainer(
        model=model,
        args=args,
        train_dataset=as_dataset(rows),
        data_collator=collator,
        processing_class=tokenizer,
        beta=cfg.dpo.beta,
        loss_type=cfg.dpo.loss_type,
        rpo_alpha=cfg.dpo.rpo_alpha,
        displacement_warn=cfg.dpo.displacement_warn_nats,
        share_prompts=share,
    )
    trainer.train()
    seconds = (time.perf_counter() - start) / epochs
    peak = peak_memory_bytes("cpu")
    accuracy, margin = held_out(model, tokenizer, eval_rows, cfg.dpo.beta)
    return {
        "seconds": seconds,
        "peak_gib": peak / 2**30,
        "accuracy": accuracy,
        "margin": margin,
        "bf16": args.bf16,
        "settings": f"epochs={epochs:g} lr={args.learning_rate:g} beta={cfg.dpo.beta} bf16={args.bf16} "
        f"lora_dropout={cfg.dpo.lora.dropout} precompute_ref=True share_prompts={share}",
    }


def run_trl(model_spec, pairs, eval_rows, work: Path, *, epochs: float | None, bf16: bool | None, max_steps: int):
    """TRL's DPOTrainer with DPOConfig defaults; `epochs=None` / `bf16=None` keep TRL's own defaults.
    `max_steps > 0` stops early and reports the epoch time as steps-per-epoch x seconds-per-step."""
    import math

    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list(
        [
            {
                "prompt": [m.model_dump() for m in p.prompt],
                "chosen": [m.model_dump() for m in p.chosen],
                "rejected": [m.model_dump() for m in p.rejected],
            }
            for p in pairs
        ]
    )
    # TRL defaults except what the comparison fixes: output dir, CPU, no trackers/saves.
    fixed = dict(output_dir=str(work / "trl"), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    if bf16 is not None:
        fixed["bf16"] = bf16
    if epochs is not None:
        fixed["num_train_epochs"] = epochs
    args = DPOConfig(**fixed, **({"max_steps": max_steps} if max_steps > 0 else {}))
    epochs = args.num_train_epochs
    tokenizer = load_tokenizer(model_spec)
    model = load_model(model_spec, dtype="float32")
    set_seed(0)
    reset_peak_memory("cpu")
    start = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(load_config("demo").dpo.lora),
    )
    trainer.train()
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes("cpu")
    steps_per_epoch = math.ceil(len(pairs) / (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    extrapolated = 0 < max_steps < steps_per_epoch * epochs
    seconds *= steps_per_epoch / max_steps if extrapolated else 1 / epochs
    accuracy, margin = held_out(trainer.model, bench_tokenizer(model_spec), eval_rows, args.beta)
    return {
        "seconds": seconds,
        "peak_gib": peak / 2**30,
        "accuracy": accuracy,
        "margin": margin,
        "settings": f"epochs={epochs:g} lr={args.learning_rate:g} beta={args.beta} "
        "bf16={args.bf16} disable_dropout={args.disable_dropout} "
        f"grad_ckpt={args.gradient_checkpointing} precompute_ref={args.precompute_ref_log_probs}"
        + (
            f" (extrapolated from {max_steps} of {steps_per_epoch} steps; held-out after those)" if extrapolated else ""
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Merged SFT model (the DPO starting point and reference).")
    parser.add_argument("--pairs", required=True, type=Path)
    parser.add_argument("--eval-pairs", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=0, help="Use only this many training pairs (0 = all).")
    parser.add_argument(
        "--ours",
        action="append",
        default=None,
        help="Our DPO settings per row: 'defaults' or a preset name (repeatable; default: defaults).",
    )
    parser.add_argument("--epochs", type=float, default=None, help="Epochs for our rows (default: each config's own).")
    parser.add_argument("--trl-epochs", type=float, default=None, help="Epochs for the TRL rows (default: TRL's, 3).")
    parser.add_argument(
        "--shipped-steps",
        type=int,
        default=1,
        help="Steps timed for the TRL-as-shipped row (0 skips it, -1 runs every epoch).",
    )
    args = parser.parse_args()

    pairs = read_records(args.pairs, "pairs")
    if args.limit:
        pairs = pairs[: args.limit]
    eval_rows, _ = tokenize_pairs(
        bench_tokenizer(args.model),
        read_records(args.eval_pairs, "pairs"),
        max_length=1024,
        response_separator=None,
        max_drop_share=1.0,
        source=str(args.eval_pairs),
    )
    print(f"{len(pairs)} training pairs, {len(eval_rows)} held-out pairs, threads {torch.get_num_threads()}")
    header = f"{'trainer':<30}{'s/epoch':>9}{'peak GiB':>10}{'held-out acc':>14}{'margin':>9}  settings"

    def show(name, r):  # each row as soon as it is measured: the TRL-as-shipped row can take long
        print(
            f"{name:<30}{r['seconds']:>9.1f}{r['peak_gib']:>10.2f}{r['accuracy']:>14.3f}{r['margin']:>9.3f}"
            f"  {r['settings']}",
            flush=True,
        )

    ours, theirs = {}, {}
    common = (args.model, pairs, eval_rows)
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.ours or ["defaults"]:
            name = f"selftune dpo {config}"
            ours[name] = in_fresh_process(
                run_ours, *common, Path(tmp), preset=None if config == "defaults" else config, epochs=args.epochs
            )
            show(name, ours[name])
        bf16 = next(iter(ours.values()))["bf16"]
        theirs["TRL defaults, our dtype"] = in_fresh_process(
            run_trl, *common, Path(tmp), epochs=args.trl_epochs, bf16=bf16, max_steps=0
        )
        show("TRL defaults, our dtype", theirs["TRL defaults, our dtype"])
        if args.shipped_steps:
            theirs["TRL defaults as shipped"] = in_fresh_process(
                run_trl, *common, Path(tmp), epochs=args.trl_epochs, bf16=None, max_steps=max(args.shipped_steps, 0)
            )
            show("TRL defaults as shipped", theirs["TRL defaults as shipped"])
    print(header)
    for name, r in {**ours, **theirs}.items():
        show(name, r)
    for name, r in ours.items():
        for other, t in theirs.items():
            print(
                f"{name} vs {other}: time {r['seconds'] / t['seconds']:.2f}x, peak memory "
                f"{r['peak_gib'] / t['peak_gib']:.2f}x, "
                f"held-out reward accuracy {r['accuracy']:.3f} vs {t['accuracy']:.3f} "
                f"({round(r['accuracy'] * len(eval_rows))} vs "
                f"{round(t['accuracy'] * len(eval_rows))} of {len(eval_rows)} pairs)"
            )


if __name__ == "__main__":
    main()
