"""One-GPU check for maintainers (bench/gpu_check.sh runs it): no downloads, random weights, one table.

Rows:
- the tiny pipeline end to end (tiny random Llama, the embedded tokenizer) in bf16, and with QLoRA;
- LoRA SFT training steps on random-weight models of real shapes (SmolLM2-135M, a 1B and an 8B
  Llama shape; the 8B in 4-bit with QLoRA): tokens/s and MFU, the model FLOPs achieved (4 FLOP
  per parameter per token: forward plus the backward through activations; LoRA's own are
  negligible) over the card's bf16 matmul peak measured here;
- one DPO step (chosen and rejected through selftune's loss) on the 1B shape;
- vLLM generation on the 1B shape when vLLM is installed, and the tiny pipeline generating with
  vLLM (in its child process, `selftune.generation.replicas`);
- the tiny pipeline with two generation replicas where two GPUs are visible (and in --smoke).

    bash bench/gpu_check.sh                  # on a GPU machine
    python bench/gpu_check.py --smoke        # the same code paths on CPU with toy shapes
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (name, hidden, layers, heads, kv heads, intermediate, vocab, 4-bit)
SHAPES = [
    ("SmolLM2-135M shape", 576, 30, 9, 3, 1536, 49152, False),
    ("Llama 1B shape", 2048, 16, 32, 8, 8192, 128256, False),
    ("Llama 8B shape, QLoRA", 4096, 32, 32, 8, 14336, 128256, True),
]
SMOKE_SHAPES = [("toy shape", 64, 2, 4, 2, 128, 1024, False)]


def bf16_peak_flops(device: str, size: int) -> float:
    """Best-of-10 FLOP/s of a (size x size) bf16 matmul: the ceiling MFU is measured against."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(10):
        _sync(device)
        started = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def random_llama(shape, device: str, dtype, folder: Path | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    name, hidden, layers, heads, kv, inter, vocab, _ = shape
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=hidden < 1024,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    if folder is not None:
        model.save_pretrained(folder, safe_serialization=True)
    return model


def lora_sft_row(shape, device: str, peak: float, batch: int, length: int, steps: int) -> list[str]:
    from peft import LoraConfig, get_peft_model

    four_bit = shape[-1]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if four_bit:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        with tempfile.TemporaryDirectory() as folder:
            random_llama(shape, "cpu", torch.bfloat16, Path(folder))
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                quantization_config=BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
                ),
                device_map={"": 0},
            )
    else:
        model = random_llama(shape, device, dtype)
    parameters = sum(p.numel() for p in model.parameters()) * (2 if four_bit else 1)  # 4-bit packs two per byte
    model.gradient_checkpointing_enable()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, shape[6], (batch, length), device=device)
    timings = []
    for step in range(steps + 1):  # the first step warms up (allocations, kernels)
        _sync(device)
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step:
            timings.append(time.perf_counter() - started)
    seconds = sorted(timings)[len(timings) // 2]
    tokens_per_second = batch * length / seconds
    mfu = 4 * parameters * tokens_per_second / peak
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    del model, optimizer
    _free(device)
    return [f"LoRA SFT, {shape[0]}", f"{tokens_per_second:,.0f} tokens/s", f"MFU {mfu:.1%}", f"{memory:.1f} GiB"]


def dpo_row(shape, device: str, batch: int, length: int) -> list[str]:
    from peft import LoraConfig, get_peft_model

    from selftune.train.dpo import dpo_loss
    from selftune.train.logprobs import sequence_logps

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = get_peft_model(
        random_llama(shape, device, dtype),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    ids = torch.randint(0, shape[6], (2 * batch, length), device=device)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : length // 2] = -100  # the first half is the prompt
    timings = []
    for step in range(4):
        _sync(device)
        started = time.perf_counter()
        policy, counts = sequence_logps(model, ids, mask, labels)
        with torch.no_grad(), model.disable_adapter():
            reference, _ = sequence_logps(model, ids, mask, labels)
        losses, _ = dpo_loss(policy, reference, counts, beta=0.1, loss_type="sigmoid", rpo_alpha=1.0)
        losses.mean().backward()
        _sync(device)
        if step:
            timings.append(time.perf_counter() - started)
    del model
    _free(device)
    seconds = sorted(timings)[len(timings) // 2]
    return [f"DPO step, {shape[0]}", f"{seconds * 1000:.0f} ms for {batch} pairs x {length} tokens", "", ""]


def vllm_row(shape, prompts: int, tokens: int) -> list[str]:
    if importlib.util.find_spec("vllm") is None:
        return ["vLLM generation", "vLLM not installed: skipped", "", ""]
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from selftune.models import builtin_gguf_path

    with tempfile.TemporaryDirectory() as folder:
        random_llama(shape[:6] + (49152, False), "cpu", torch.bfloat16, Path(folder))
        gguf = builtin_gguf_path("smollm2-135m-instruct")
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
        llm = LLM(model=folder, dtype="bfloat16", gpu_memory_utilization=0.5, enforce_eager=True)
        started = time.perf_counter()
        outputs = llm.generate(
            [f"Question {k}: tell me a story." for k in range(prompts)],
            SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=1.0),
        )
        seconds = time.perf_counter() - started
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return [f"vLLM generation, {shape[0]}", f"{generated / seconds:,.0f} tokens/s ({prompts} prompts)", "", ""]


def pipeline_row(label: str, overrides: list[str], device: str) -> list[str]:
    import selftune
    from tests.conftest import build_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        from transformers import AutoTokenizer

        from selftune.models import builtin_gguf_path

        gguf = builtin_gguf_path("smollm2-135m-instruct")
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(Path(folder) / "tok")
        model = build_tiny_model(Path(folder) / "model", Path(folder) / "tok")
        cfg = selftune.load_config("tiny", overrides=[f"model.spec={model}", *overrides])
        started = time.perf_counter()
        steps = selftune.run_pipeline(Path(folder) / "run", cfg, on_event=lambda line: None)
        seconds = time.perf_counter() - started
    ran = sum(step.action == "ran" for step in steps)
    return [f"tiny pipeline, {label}", f"{ran} stages ran in {seconds:.0f}s", "", ""]


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Toy shapes on CPU: checks the code paths only.")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; run it on a GPU machine (or --smoke for the code paths on CPU)")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    batch, length, steps = (2, 32, 2) if args.smoke else (8, 1024, 5)
    peak = bf16_peak_flops(device, 512 if args.smoke else 8192)
    name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
    rows = [["matmul peak", f"{peak / 1e12:.1f} TFLOP/s ({'fp32' if args.smoke else 'bf16'})", name, ""]]
    dtype_setting = "float32" if args.smoke else "auto"
    rows.append(pipeline_row("bf16" if not args.smoke else "fp32", [f"model.dtype={dtype_setting}"], device))
    if not args.smoke:
        rows.append(pipeline_row("QLoRA", ["model.dtype=auto", "model.load_in_4bit=true"], device))
    if not args.smoke and importlib.util.find_spec("vllm") is not None:  # vLLM in its child process
        rows.append(pipeline_row("vLLM generation", ["model.dtype=auto", "generation.backend=vllm"], device))
    if args.smoke or torch.cuda.device_count() >= 2:  # data-parallel generation replicas
        rows.append(
            pipeline_row("2 generation replicas", [f"model.dtype={dtype_setting}", "generation.replicas=2"], device)
        )
    for shape in shapes:
        if shape[-1] and args.smoke:
            continue
        rows.append(lora_sft_row(shape, device, peak, batch, length, steps))
    rows.append(dpo_row(shapes[min(1, len(shapes) - 1)], device, batch // 2 or 1, length))
    if not args.smoke:
        rows.append(vllm_row(shapes[1], prompts=64, tokens=128))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    for row in rows:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
