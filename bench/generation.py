"""Generation backends side by side, and the demo's sampling workload with and without early
rejection, all in one run on one machine (one heavy job at a time: run nothing else meanwhile).

Part 1, backends on the same prompts and settings (the engine with and without prepacked
weights): tokens/s for greedy answers and for sampling (n answers per prompt), the ratio to the
HF backend (`model.generate`), and how many greedy answers equal the HF backend's. CTranslate2
joins when it is installed (`pip install ctranslate2`): the checkpoint is converted once (time
printed) into a temporary folder.

Part 2, the demo preset's sampling stage (its train prompts, K answers each, its token cap): the
HF backend, the continuous engine, the engine with early rejection, and that again with its Linear
weights not prepacked for oneDNN (`selftune.generation.packing.packed_linears`, on by default).
Prints wall time, answers
that pass every check, passing answers per minute, the yield (prompts with a passing answer) and
the ratios against the HF backend; then the engine with early rejection in `--replicas` child
processes (`generation.replicas`), the CPU threads split between them.

    python bench/generation.py [--model builtin:smollm2-135m-instruct] [--prompts 32]
        [--max-new-tokens 96] [--batch-size 64] [--dtype float32 --dtype bfloat16] [--workload demo]
        [--workload-prompts N] [--replicas 2] [--skip-backends] [--skip-workload]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from selftune.config.loading import load_config
from selftune.data.early_rejection import EarlyRejection
from selftune.data.prompts import build_prompts
from selftune.generation.engine import ContinuousGenerator
from selftune.generation.hf import HFGenerator
from selftune.generation.replicas import ReplicaGenerator
from selftune.generation.sampling import encode_prompt
from selftune.generation.types import SamplingParams
from selftune.models import end_of_turn_ids, load_model, load_tokenizer, resolve_model_path, unload
from selftune.scoring.constraint import ConstraintScorer


def timed(generate):
    start = time.perf_counter()
    result = generate()
    return result, time.perf_counter() - start


def ctranslate2_run(model_path: str, tokenizer, prompts, params: SamplingParams, batch_size: int, workdir: Path):
    """(texts per prompt, generated tokens, seconds, conversion seconds) with CTranslate2 in fp32."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    out = workdir / "ct2"
    start = time.perf_counter()
    if not (out / "model.bin").exists():
        TransformersConverter(model_path).convert(str(out), force=True)
    converted = time.perf_counter() - start
    generator = ctranslate2.Generator(
        str(out), device="cpu", compute_type="float32", intra_threads=torch.get_num_threads()
    )
    tokens = [tokenizer.convert_ids_to_tokens(encode_prompt(tokenizer, p)) for p in prompts]
    ends = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)]
    start = time.perf_counter()
    ctranslate2.set_random_seed(params.seed)
    results = generator.generate_batch(
        [t for t in tokens for _ in range(params.n)],
        max_length=params.max_new_tokens,
        max_batch_size=batch_size,
        include_prompt_in_result=False,
        end_token=ends,
        sampling_topk=1 if params.greedy else 0,
        sampling_topp=params.top_p,
        sampling_temperature=max(params.temperature, 1e-6),
    )
    seconds = time.perf_counter() - start
    texts = [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]
    generated = sum(
        len(r.sequences_ids[0]) + (1 if len(r.sequences_ids[0]) < params.max_new_tokens else 0) for r in results
    )
    return texts, generated, seconds, converted


def part_backends(args, model, tokenizer) -> None:
    prompts = [[m.model_dump() for m in r.messages] for r in build_prompts(args.prompts, 0, seed=0)]
    greedy = SamplingParams(max_new_tokens=args.max_new_tokens)
    sampled = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    print(
        f"\n== backends: {len(prompts)} prompts, {args.max_new_tokens} new tokens at most, batch {args.batch_size} =="
    )
    print(f"{'backend':<22}{'mode':<10}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'vs hf':>8}{'= hf greedy':>13}")
    reference_rate, reference_texts = {}, None
    backends = [
        ("hf", HFGenerator(model, tokenizer, batch_size=args.batch_size)),
        ("continuous", ContinuousGenerator(model, tokenizer, batch_size=args.batch_size)),
        ("continuous, plain W", ContinuousGenerator(model, tokenizer, batch_size=args.batch_size, pack_weights=False)),
    ]
    backends[0][1].generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up
    rows = []
    for name, generator in backends:
        for mode, params in (("greedy", greedy), ("sample n4", sampled)):
            result, seconds = timed(lambda generator=generator, params=params: generator.generate(prompts, params))
            tokens = sum(c.completion_tokens for r in result for c in r)
            texts = [r[0].text for r in result]
            if name == "hf":
                reference_rate[mode] = tokens / seconds
                if mode == "greedy":
                    reference_texts = texts
            same = sum(a == b for a, b in zip(texts, reference_texts)) if mode == "greedy" else None
            rows.append((name, mode, tokens, seconds, same))
    if importlib.util.find_spec("ctranslate2") is not None:
        with tempfile.TemporaryDirectory() as workdir:
            for mode, params in (("greedy", greedy), ("sample n4", sampled)):
                texts, tokens, seconds, converted = ctranslate2_run(
                    resolve_model_path(args.model), tokenizer, prompts, params, args.batch_size, Path(workdir)
                )
                same = sum(a == b for a, b in zip(texts, reference_texts)) if mode == "greedy" else None
                rows.append(("ctranslate2 fp32", mode, tokens, seconds, same))
                if converted > 0.5:
                    print(f"(ctranslate2 conversion: {converted:.1f}s)")
    else:
        print("(ctranslate2 not installed: pip install ctranslate2 to add it)")
    for name, mode, tokens, seconds, same in rows:
        rate = tokens / seconds
        agree = f"{same}/{len(prompts)}" if same is not None else "-"
        print(
            f"{name:<22}{mode:<10}{tokens:>8}{seconds:>9.1f}{rate:>10.1f}"
            f"{rate / reference_rate[mode]:>7.2f}x{agree:>13}"
        )


def part_workload(args, model, tokenizer) -> None:
    cfg = load_config(args.workload)
    records = [
        r
        for r in build_prompts(
            cfg.prompts.n_train, 1, cfg.prompts.max_constraints, cfg.prompts.seed, cfg.prompts.type_weights
        )
        if r.split == "train"
    ]
    records = records[: args.workload_prompts or None]
    prompts = [[m.model_dump() for m in r.messages] for r in records]
    params = SamplingParams(
        n=cfg.sample.k,
        temperature=cfg.sample.temperature,
        top_p=cfg.sample.top_p,
        max_new_tokens=cfg.generation.max_new_tokens,
        seed=cfg.sample.seed,
    )
    scorer = ConstraintScorer(quality_checks=cfg.sample.scorer.quality_checks)
    print(
        f"\n== the {args.workload} preset's sampling workload: {len(records)} prompts x {params.n} answers, "
        f"{params.max_new_tokens} tokens at most, batch {cfg.generation.batch_size} =="
    )
    print(f"{'backend':<34}{'seconds':>9}{'tokens':>8}{'passing':>9}{'per min':>9}{'yield':>8}{'vs hf':>8}")
    batch = cfg.generation.batch_size  # the preset's own batch: the workload as the stage runs it

    def early():  # a fresh hook per run: it counts each prompt's cut answers
        return EarlyRejection(records, cfg.sample.full_samples, cfg.sample.k)

    runs = [
        ("hf", lambda: HFGenerator(model, tokenizer, batch_size=batch), None),
        ("continuous", lambda: ContinuousGenerator(model, tokenizer, batch_size=batch), None),
        ("continuous + early rejection", lambda: ContinuousGenerator(model, tokenizer, batch_size=batch), early),
        (
            "  ... weights not prepacked",
            lambda: ContinuousGenerator(model, tokenizer, batch_size=batch, pack_weights=False),
            early,
        ),
    ]
    if args.replicas > 1:  # the same engine in child processes, the threads split between them
        runs.append(
            (
                f"  ... in {args.replicas} replicas",
                lambda: ReplicaGenerator(
                    args.model,
                    replicas=args.replicas,
                    backend="continuous",
                    batch_size=batch,
                    dtype="float32",
                    trust_remote_code=False,
                ),
                early,
            )
        )
    base_rate = None
    for name, make, stop_when in runs:
        generator = make()  # started (replicas: model loaded in each child) before the clock starts
        hook = stop_when() if stop_when else None
        result, seconds = timed(
            lambda generator=generator, hook=hook: generator.generate(prompts, params, stop_when=hook)
        )
        if isinstance(generator, ReplicaGenerator):
            generator.close()
        passing = [
            [s.passed for s in scorer.score(record, [c.text for c in answers])]
            for record, answers in zip(records, result)
        ]
        count = sum(sum(p) for p in passing)
        rate = count / seconds * 60
        base_rate = base_rate or rate
        tokens = sum(c.completion_tokens for r in result for c in r)
        yielded = sum(any(p) for p in passing) / len(records)
        print(f"{name:<34}{seconds:>9.1f}{tokens:>8}{count:>9}{rate:>9.2f}{yielded:>8.3f}{rate / base_rate:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workload", default="demo", help="Preset whose sampling stage is measured in part 2.")
    parser.add_argument(
        "--workload-prompts",
        type=int,
        default=0,
        help="Use only the first N train prompts of the workload (0 = all; the HF row is the slow one).",
    )
    parser.add_argument(
        "--replicas", type=int, default=2, help="Also run the workload in this many replicas (1 = skip that row)."
    )
    parser.add_argument(
        "--dtype",
        action="append",
        choices=["float32", "bfloat16"],
        help="Weights dtype of part 1 (repeatable: each runs side by side in this process); default float32. "
        "Part 2 runs in the first.",
    )
    parser.add_argument("--skip-backends", action="store_true")
    parser.add_argument("--skip-workload", action="store_true")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    dtypes = args.dtype or ["float32"]
    for dtype in dtypes if not args.skip_backends else []:
        model = load_model(args.model, dtype=dtype)
        print(f"model {args.model} {dtype}, {torch.get_num_threads()} threads")
        part_backends(args, model, tokenizer)
        unload(model)
    if not args.skip_workload:
        model = load_model(args.model, dtype=dtypes[0])
        part_workload(args, model, tokenizer)
        unload(model)


if __name__ == "__main__":
    main()
