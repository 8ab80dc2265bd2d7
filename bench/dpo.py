"""Our DPO against TRL's DPOTrainer with its default settings, side by side in one run.

Same merged SFT model, same pairs, same fresh LoRA shape, same effective batch (8 = TRL's default
per-device batch, no accumulation) and one epoch each. Prints wall time per epoch, peak memory
(RSS high-water mark), and held-out reward accuracy and margin measured the same way for all rows:
log-probs of the held-out pairs under the trained adapter vs the adapter disabled (the SFT
reference), masked by `selftune.masking`.

Rows:
- `selftune dpo`: the demo preset's DPO settings at effective batch 8, dtype as `auto` picks it.
- `TRL defaults, our dtype`: every DPOConfig default except mixed precision, which follows ours
  (on a CPU without native bf16 units `auto` picks fp32; on a bf16 GPU both run bf16). A full epoch.
- `TRL defaults as shipped`: DPOConfig untouched (bf16=True). On a CPU without native bf16 units
  that precision is emulated and a step takes minutes, so this row times `--shipped-steps` steps
  and reports steps-per-epoch x seconds-per-step (marked "extrapolated"); 0 skips it, -1 runs
  the full epoch.

    python bench/dpo.py --model runs/demo/round-1/sft/merged \
        --pairs runs/demo/round-1/pairs/pairs.jsonl --eval-pairs runs/demo/round-1/pairs/eval_pairs.jsonl
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from selftune.config import load_config
from selftune.dpo import PairCollator, sequence_logps, tokenize_pairs
from selftune.models import load_model, load_tokenizer, peak_memory_bytes, reset_peak_memory
from selftune.records import read_records
from selftune.sft import lora_config


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


def run_ours(model_spec, pairs, eval_rows, tokenizer, work: Path):
    from peft import get_peft_model
    from transformers import set_seed

    from selftune.dpo import make_dpo_trainer_class, reference_logps
    from selftune.sft import _as_dataset, training_arguments

    cfg = load_config("demo", overrides=["dpo.epochs=1", "dpo.report_to=[]", "dpo.save_steps=100000",
                                         "dpo.per_device_batch_size=8", "dpo.gradient_accumulation=1"])
    rows, _ = tokenize_pairs(tokenizer, pairs, max_length=cfg.dpo.max_length, response_separator=None,
                             max_drop_share=1.0, source="bench")
    args = training_arguments(cfg.dpo, work / "ours", has_eval=False, device="cpu")
    model = load_model(model_spec, dtype="float32")
    set_seed(0)
    model = get_peft_model(model, lora_config(cfg.dpo.lora))
    collator = PairCollator(tokenizer.pad_token_id)
    reset_peak_memory("cpu")
    start = time.perf_counter()
    reference_logps(model, rows, collator, 16, args.bf16)  # part of our epoch's cost
    trainer = make_dpo_trainer_class()(model=model, args=args, train_dataset=_as_dataset(rows), data_collator=collator,
                                       processing_class=tokenizer, beta=cfg.dpo.beta, loss_type=cfg.dpo.loss_type,
                                       rpo_alpha=cfg.dpo.rpo_alpha, displacement_warn=cfg.dpo.displacement_warn_nats)
    trainer.train()
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes("cpu")
    accuracy, margin = held_out(model, tokenizer, eval_rows, cfg.dpo.beta)
    return {"seconds": seconds, "peak_gib": peak / 2**30, "accuracy": accuracy, "margin": margin, "bf16": args.bf16,
            "settings": f"lr={args.learning_rate:g} beta={cfg.dpo.beta} bf16={args.bf16} precompute_ref=True"}


def run_trl(model_spec, pairs, eval_rows, tokenizer, work: Path, *, bf16: bool | None, max_steps: int):
    """TRL's DPOTrainer with DPOConfig defaults; `bf16=None` keeps TRL's own mixed-precision default.
    `max_steps > 0` stops early and reports the epoch time as steps-per-epoch x seconds-per-step."""
    import math

    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([{"prompt": [m.model_dump() for m in p.prompt], "chosen": [m.model_dump() for m in p.chosen],
                               "rejected": [m.model_dump() for m in p.rejected]} for p in pairs])
    # TRL defaults except what the comparison fixes: output dir, one epoch, CPU, no trackers/saves.
    fixed = dict(output_dir=str(work / "trl"), num_train_epochs=1, use_cpu=True, report_to="none",
                 save_strategy="no", disable_tqdm=True)
    if bf16 is not None:
        fixed["bf16"] = bf16
    args = DPOConfig(**fixed, **({"max_steps": max_steps} if max_steps > 0 else {}))
    model = load_model(model_spec, dtype="float32")
    set_seed(0)
    reset_peak_memory("cpu")
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(load_config("demo").dpo.lora))
    trainer.train()
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes("cpu")
    steps_per_epoch = math.ceil(len(pairs) / (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    extrapolated = 0 < max_steps < steps_per_epoch
    if extrapolated:
        seconds *= steps_per_epoch / max_steps
    accuracy, margin = held_out(trainer.model, tokenizer, eval_rows, args.beta)
    return {"seconds": seconds, "peak_gib": peak / 2**30, "accuracy": accuracy, "margin": margin,
            "settings": f"lr={args.learning_rate:g} beta={args.beta} bf16={args.bf16} "
                        f"grad_ckpt={args.gradient_checkpointing} precompute_ref={args.precompute_ref_log_probs}"
                        + (f" (extrapolated from {max_steps} of {steps_per_epoch} steps; held-out after those)"
                           if extrapolated else "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Merged SFT model (the DPO starting point and reference).")
    parser.add_argument("--pairs", required=True, type=Path)
    parser.add_argument("--eval-pairs", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=0, help="Use only this many training pairs (0 = all).")
    parser.add_argument("--shipped-steps", type=int, default=1,
                        help="Steps timed for the TRL-as-shipped row (0 skips it, -1 runs the full epoch).")
    args = parser.parse_args()

    pairs = read_records(args.pairs, "pairs")
    if args.limit:
        pairs = pairs[: args.limit]
    tokenizer = load_tokenizer(args.model)
    tokenizer.padding_side = "right"
    eval_rows, _ = tokenize_pairs(tokenizer, read_records(args.eval_pairs, "pairs"), max_length=1024,
                                  response_separator=None, max_drop_share=1.0, source=str(args.eval_pairs))
    print(f"{len(pairs)} training pairs, {len(eval_rows)} held-out pairs, threads {torch.get_num_threads()}")
    header = f"{'trainer':<26}{'s/epoch':>9}{'peak GiB':>10}{'held-out acc':>14}{'margin':>9}  settings"

    def show(name, r):  # each row as soon as it is measured: the TRL-as-shipped row can take long
        print(f"{name:<26}{r['seconds']:>9.1f}{r['peak_gib']:>10.2f}{r['accuracy']:>14.3f}{r['margin']:>9.3f}  {r['settings']}",
              flush=True)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["selftune dpo"] = ours = run_ours(args.model, pairs, eval_rows, tokenizer, Path(tmp))
        print(header)
        show("selftune dpo", ours)
        gc.collect()
        results["TRL defaults, our dtype"] = run_trl(args.model, pairs, eval_rows, load_tokenizer(args.model),
                                                     Path(tmp), bf16=ours["bf16"], max_steps=0)
        show("TRL defaults, our dtype", results["TRL defaults, our dtype"])
        if args.shipped_steps:
            gc.collect()
            results["TRL defaults as shipped"] = run_trl(args.model, pairs, eval_rows, load_tokenizer(args.model),
                                                         Path(tmp), bf16=None, max_steps=max(args.shipped_steps, 0))
            show("TRL defaults as shipped", results["TRL defaults as shipped"])
    print(header)
    for name, r in results.items():
        show(name, r)
    for name, r in results.items():
        if name != "selftune dpo":
            print(f"vs {name}: time {ours['seconds'] / r['seconds']:.2f}x, peak memory {ours['peak_gib'] / r['peak_gib']:.2f}x, "
                  f"held-out reward accuracy {ours['accuracy']:.3f} vs {r['accuracy']:.3f}")

if __name__ == "__main__":
    main()
