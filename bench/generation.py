"""Batched HF generation vs a one-prompt-at-a-time `model.generate` loop, side by side.

Same model, prompts, dtype and greedy settings for both; prints tokens/s of each and the ratio.

    python bench/generation.py [--model builtin:smollm2-135m-instruct] [--prompts 32]
                               [--max-new-tokens 96] [--batch-size 32] [--dtype auto]
"""

from __future__ import annotations

import argparse
import time

import torch

from selftune.generation import HFGenerator, SamplingParams, encode_prompt
from selftune.models import end_of_turn_ids, load_model, load_tokenizer, unload

TOPICS = ["the sea", "a city at night", "bread", "the moon", "trains", "winter", "a lost key", "coffee"]
ASKS = [
    "Write a short poem about {}.",
    "Give three facts about {} as a bulleted list.",
    "Describe {} in two sentences, all in lowercase.",
    "Write a title for an essay about {}, wrapped in <<double angular brackets>>, then one paragraph.",
]


def bench_prompts(count: int) -> list[list[dict]]:
    prompts = [ask.format(topic) for ask in ASKS for topic in TOPICS]
    return [[{"role": "user", "content": text}] for text in prompts[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype)
    prompts = bench_prompts(args.prompts)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    stop_ids = end_of_turn_ids(tokenizer)
    print(f"model {args.model} dtype {model.dtype} threads {torch.get_num_threads()} "
          f"prompts {len(prompts)} max_new_tokens {args.max_new_tokens}")

    # Warm-up both paths once so neither pays first-call costs in the timing.
    HFGenerator(model, tokenizer, batch_size=4).generate(prompts[:4], SamplingParams(max_new_tokens=4))

    start = time.perf_counter()
    batched = HFGenerator(model, tokenizer, batch_size=args.batch_size).generate(prompts, params)
    batched_seconds = time.perf_counter() - start
    batched_tokens = sum(c[0].completion_tokens for c in batched)

    start = time.perf_counter()
    loop_tokens, loop_texts = 0, []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt)])
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                do_sample=False, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
            )
            new = out[0, ids.shape[1]:].tolist()
            loop_tokens += len(new)
            cut = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
            loop_texts.append(tokenizer.decode(new[:cut], skip_special_tokens=True))
    loop_seconds = time.perf_counter() - start
    same = sum(a[0].text == b for a, b in zip(batched, loop_texts))

    batched_rate, loop_rate = batched_tokens / batched_seconds, loop_tokens / loop_seconds
    print(f"{'backend':<28}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'batched HFGenerator':<28}{batched_tokens:>8}{batched_seconds:>10.1f}{batched_rate:>10.1f}")
    print(f"{'one-at-a-time generate()':<28}{loop_tokens:>8}{loop_seconds:>10.1f}{loop_rate:>10.1f}")
    print(f"speed-up (tokens/s ratio): {batched_rate / loop_rate:.2f}x")
    print(f"identical greedy answers: {same}/{len(prompts)}")
    unload(model)


if __name__ == "__main__":
    main()
