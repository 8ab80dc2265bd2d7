"""Our SFT against TRL's SFTTrainer with its default settings, side by side in one run.

Same model, same SFT data, same LoRA shape, same effective batch (8) and one epoch each. Prints
train tokens/s, the share of this machine's measured fp32 matmul peak that the model FLOPs reach
(LoRA training: 4 FLOP per parameter per token, forward plus the backward through activations),
peak memory (RSS high-water mark) and final held-out loss of each, and the ratios. Rows: our
trainer (LM head on answer positions only), our trainer with the model's own full-logits loss
(the previous path), and TRL's SFTTrainer. Held-out loss is measured the same way for all: mean
response-token loss of the trained model on the same validation rows, masked by `selftune.train.masking`.

    python bench/sft.py --data runs/demo/round-1/sft-data/sft.jsonl [--model builtin:smollm2-135m-instruct] [--skip-trl]
        [--limit N] [--dropout-rows] [--demo-batch]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from selftune.config.loading import load_config
from selftune.data.records import read_records
from selftune.models import load_model, load_tokenizer, peak_memory_bytes, reset_peak_memory
from selftune.stages.sft import split_validation
from selftune.train.masking import tokenize_example
from selftune.train.toolkit import lora_config


@torch.no_grad()
def held_out_loss(model, rows) -> float:
    model.eval()
    total, count = 0.0, 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([row["labels"]])
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        mask = target != -100
        loss = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
        total, count = total + loss.item(), count + mask.sum().item()
    return total / count


def matmul_peak_gflops(size: int = 2048, repeats: int = 8) -> float:
    """Best-of-`repeats` fp32 GFLOP/s of one (size x size) @ (size x size) matmul on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed_matmul(a, b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed_matmul(a, b) -> float:
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


def run_ours(
    model_spec,
    records,
    eval_rows,
    work: Path,
    *,
    full_logits: bool = False,
    dropout=None,
    seed: int = 0,
    demo_batch: bool = False,
):
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, set_seed

    from selftune.train.masking import tokenize_dataset
    from selftune.train.sft import ResponseTrainer
    from selftune.train.toolkit import training_arguments
    from selftune.train.trainer import GuardedTrainer

    # Effective batch 8 (TRL's default per-device batch, no accumulation), or with `demo_batch` the
    # demo preset's own batch (4 per device, length-grouped) as the SFT stage runs it.
    cfg = load_config(
        "demo",
        overrides=[
            f"model.spec={model_spec}",
            "sft.epochs=1",
            "sft.report_to=[]",
            *([] if demo_batch else ["sft.per_device_batch_size=8", "sft.gradient_accumulation=1"]),
            "sft.save_steps=100000",
            "sft.validation_share=0",
            *([f"sft.lora.dropout={dropout}"] if dropout is not None else []),
        ],
    )
    tokenizer = load_tokenizer(model_spec)
    tokenizer.padding_side = "right"
    rows, _ = tokenize_dataset(
        tokenizer, records, max_length=cfg.sft.max_length, response_separator=None, max_drop_share=1.0, source="bench"
    )
    from datasets import Dataset

    model = load_model(model_spec, dtype="float32")
    set_seed(seed)
    model = get_peft_model(model, lora_config(cfg.sft.lora))
    args = training_arguments(cfg.sft, work / "ours", has_eval=False, device="cpu")
    args.seed = args.data_seed = seed
    trainer_class = GuardedTrainer if full_logits else ResponseTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
    )
    reset_peak_memory("cpu")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes("cpu")
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "peak_gib": peak / 2**30,
        "held_out_loss": held_out_loss(model, eval_rows),
        "bf16": args.bf16,
        "lr": args.learning_rate,
        "dropout": cfg.sft.lora.dropout,
        "seed": seed,
        "parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
    }


def run_trl(model_spec, records, eval_rows, work: Path, tokens: int):
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(model_spec)
    model = load_model(model_spec, dtype="float32")
    data = Dataset.from_list(
        [
            {"prompt": [m.model_dump() for m in r.prompt], "completion": [m.model_dump() for m in r.completion]}
            for r in records
        ]
    )
    lora = load_config("demo").sft.lora
    # TRL defaults except what the comparison fixes: output dir, one epoch, CPU, no trackers.
    args = SFTConfig(
        output_dir=str(work / "trl"),
        num_train_epochs=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    set_seed(0)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora_config(lora)
    )
    reset_peak_memory("cpu")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    peak = peak_memory_bytes("cpu")
    return {
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "peak_gib": peak / 2**30,
        "held_out_loss": held_out_loss(trainer.model, eval_rows),
        "bf16": args.bf16,
        "lr": args.learning_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=0, help="Use only this many examples (0 = all).")
    parser.add_argument("--skip-trl", action="store_true", help="Leave out TRL's SFTTrainer row.")
    parser.add_argument(
        "--dropout-rows",
        action="store_true",
        help="Instead of the full-logits row: the default LoRA dropout (0) and dropout 0.05, each with seeds 0 "
        "and 1 (the seed pair gives the held-out loss's noise).",
    )
    parser.add_argument(
        "--demo-batch",
        action="store_true",
        help="Our rows with the demo preset's batch (as the SFT stage runs) instead of TRL's default of 8.",
    )
    args = parser.parse_args()

    records = read_records(args.data, "sft")
    train, held = split_validation(records, 0.1, seed=0)
    if args.limit:
        train = train[: args.limit]
    tokenizer = load_tokenizer(args.model)
    eval_rows = [
        tokenize_example(
            tokenizer,
            {"prompt": [m.model_dump() for m in r.prompt], "completion": [m.model_dump() for m in r.completion]},
        )
        for r in held
    ]
    train_tokens = sum(
        len(
            tokenize_example(
                tokenizer,
                {"prompt": [m.model_dump() for m in r.prompt], "completion": [m.model_dump() for m in r.completion]},
            )["input_ids"]
        )
        for r in train
    )
    base_model = load_model(args.model, dtype="float32")
    base_loss = held_out_loss(base_model, eval_rows)
    del base_model
    gc.collect()
    print(
        f"data {args.data}: {len(train)} train examples ({train_tokens} tokens), {len(held)} held out; "
        f"threads {torch.get_num_threads()}; base held-out loss {base_loss:.4f}"
    )
    peak_gflops = matmul_peak_gflops()
    print(f"measured fp32 matmul peak: {peak_gflops:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(args.model, train, eval_rows, Path(tmp) / "a", demo_batch=args.demo_batch)
        rows.append(("selftune sft", ours))
        gc.collect()
        if args.dropout_rows:
            variants = [("selftune sft, seed 1", {"seed": 1})] + [
                (f"selftune sft, dropout 0.05, seed {seed}", {"dropout": 0.05, "seed": seed}) for seed in (0, 1)
            ]
        else:
            variants = [("selftune sft, full logits", {"full_logits": True})]
        for k, (name, options) in enumerate(variants):
            options["demo_batch"] = args.demo_batch
            rows.append((name, run_ours(args.model, train, eval_rows, Path(tmp) / f"v{k}", **options)))
            gc.collect()
        if not args.skip_trl:
            rows.append(("TRL SFTTrainer default", run_trl(args.model, train, eval_rows, Path(tmp), train_tokens)))
    flop_per_token = 4 * ours["parameters"]
    print(f"{'trainer':<34}{'seconds':>9}{'tokens/s':>10}{'of peak':>9}{'peak GiB':>10}{'held-out loss':>15}  settings")
    for name, r in rows:
        share = r["tokens_per_second"] * flop_per_token / 1e9 / peak_gflops
        print(
            f"{name:<34}{r['seconds']:>9.1f}{r['tokens_per_second']:>10.1f}{share:>8.0%}{r['peak_gib']:>10.2f}"
            f"{r['held_out_loss']:>15.4f}  bf16={r['bf16']} lr={r['lr']:g}"
            + (f" dropout={r['dropout']:g} seed={r['seed']}" if "dropout" in r else "")
        )
    for name, r in rows[1:]:
        print(
            f"selftune sft vs {name}: tokens/s {ours['tokens_per_second'] / r['tokens_per_second']:.2f}x, "
            f"peak memory {ours['peak_gib'] / r['peak_gib']:.2f}x, held-out loss {ours['held_out_loss']:.4f} vs "
            f"{r['held_out_loss']:.4f} (base {base_loss:.4f})"
        )


if __name__ == "__main__":
    main()
