"""vLLM on GPUs (always in a child process: its in-process teardown keeps GPU memory)."""

from __future__ import annotations

import importlib.util

import torch

from selftune.errors import MissingExtraError
from selftune.generation.sampling import render_prompt, row_seed
from selftune.generation.types import Completion
from selftune.models import end_of_turn_ids

# vLLM is an optional extra for GPUs: imported only where it generates.


class VLLMGenerator:
    """vLLM behind the same interface (extra `vllm`); used for large models on GPUs."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer, *, tensor_parallel_size: int = 1, dtype: str = "auto"):
        self.require()
        from vllm import LLM

        self.tokenizer = tokenizer
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype)

    @staticmethod
    def require() -> None:
        if importlib.util.find_spec("vllm") is None:
            raise MissingExtraError(
                "the vLLM backend needs vLLM: pip install 'selftune[vllm]' (GPU machines only), "
                "or use generation.backend: hf"
            )

    def generate(self, prompts, params, progress=None, stop_when=None):
        """`stop_when` (early rejection) is not applied: vLLM offers no per-step hook that sees the
        decoded text of every sequence, so answers run to their end and are scored whole."""
        from vllm import SamplingParams as VSamplingParams

        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        results: list[list[Completion]] = [[] for _ in texts]
        requests = []
        for i, text in enumerate(texts):
            for s in range(params.n):
                seed = None if params.greedy else row_seed(params.seed, text, s)
                requests.append((i, s, seed))
        vparams = [
            VSamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=seed,
                stop_token_ids=self.stop_ids,
            )
            for _, _, seed in requests
        ]
        outputs = self.llm.generate([texts[i] for i, _, _ in requests], vparams, use_tqdm=False)
        for (i, s, seed), out in zip(requests, outputs):
            choice = out.outputs[0]
            results[i].append(
                Completion(
                    prompt_index=i,
                    sample_index=s,
                    text=choice.text,
                    finish_reason="stop" if choice.finish_reason == "stop" else "length",
                    prompt_tokens=len(out.prompt_token_ids),
                    completion_tokens=len(choice.token_ids),
                    seed=seed,
                    token_ids=tuple(choice.token_ids),
                )
            )
        if progress:
            progress(len(texts), sum(c.completion_tokens for r in results for c in r))
        return results


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
