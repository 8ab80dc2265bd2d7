"""Our DPO against TRL's DPOTrainer with its default settings, side by side in one run.

Same merged SFT model, same pairs, same fresh LoRA shape, same effective batch (8 = TRL's default
per-device batch, no accumulation) and one epoch each. Prints wall time per epoch, peak memory
(RSS high-water mark), and held-out reward accuracy and margin measured the same way for both:
log-probs of the held-out pairs under the trained adapter vs the adapter disabled (the SFT
reference), masked by `selftune.masking`.

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
    model = load_model(model_spec, dtype="float32")
    set_seed(0)
    model = get_peft_model(model, lora_config(cfg.dpo.lora))
    args = training_arguments(cfg.dpo, work / "ours", has_eval=False, device="cpu")
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
    return {"seconds": seconds, "peak_gib": peak / 2**30, "accuracy": accuracy, "margin": margin,
            "settings": f"lr={args.learning_rate:g} beta={cfg.dpo.beta} bf16={args.bf16} precompute_ref=True"}


def run_trl(model_spec, pairs, eval_rows, tokenizer, work: Path):
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([{"prompt": [m.model_dump() for m in p.prompt], "chosen": [m.model_dump() for m in p.chosen],
                               "rejected": [m.model_dump() for m in p.rejected]} for p in pairs])
    model = load_model(model_spec, dtype="float32")
    # TRL defaults except what the comparison fixes: output dir, one epoch, CPU, no trackers/saves.
    args = DPOConfig(output_dir=str(work / "trl"), num_train_epochs=1, use_cpu=True, report_to="none",
                     save_strategy="no", disable_tqdm=True)
    set_seed(0)
    reset_peak_memory("cpu")
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(load_config("demo").dpo.lora))
    trainer.train()
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes("cpu")
    accuracy, margin = held_out(trainer.model, tokenizer, eval_rows, args.beta)
    return {"seconds": seconds, "peak_gib": peak / 2**30, "accuracy": accuracy, "margin": margin,
            "settings": f"lr={args.learning_rate:g} beta={args.beta} bf16={args.bf16} "
                        f"grad_ckpt={args.gradient_checkpointing} precompute_ref={args.precompute_ref_log_probs}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Merged SFT model (the DPO starting point and reference).")
    parser.add_argument("--pairs", required=True, type=Path)
    parser.add_argument("--eval-pairs", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=0, help="Use only this many training pairs (0 = all).")
    args = parser.parse_args()

    pairs = read_records(args.pairs, "pairs")
    if args.limit:
        pairs = pairs[: args.limit]
    tokenizer = load_tokenizer(args.model)
    tokenizer.padding_side = "right"
    eval_rows, _ = tokenize_pairs(tokenizer, read_records(args.eval_pairs, "pairs"), max_length=1024,
                                  response_separator=None, max_drop_share=1.0, source=str(args.eval_pairs))
    print(f"{len(pairs)} training pairs, {len(eval_rows)} held-out pairs, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(args.model, pairs, eval_rows, tokenizer, Path(tmp))
        gc.collect()
        trl = run_trl(args.model, pairs, eval_rows, load_tokenizer(args.model), Path(tmp))
    print(f"{'trainer':<24}{'s/epoch':>9}{'peak GiB':>10}{'held-out acc':>14}{'margin':>9}  settings")
    for name, r in (("selftune dpo", ours), ("TRL DPOTrainer default", trl)):
        print(f"{name:<24}{r['seconds']:>9.1f}{r['peak_gib']:>10.2f}{r['accuracy']:>14.3f}{r['margin']:>9.3f}  {r['settings']}")
    print(f"time ratio (selftune / TRL): {ours['seconds'] / trl['seconds']:.2f}x; "
          f"peak memory ratio: {ours['peak_gib'] / trl['peak_gib']:.2f}x; "
          f"held-out reward accuracy {ours['accuracy']:.3f} vs {trl['accuracy']:.3f}")


if __name__ == "__main__":
    main()
