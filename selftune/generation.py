"""Text generation behind one interface: a batched Hugging Face backend and an optional vLLM one.

A prompt is either a list of chat messages (rendered with the tokenizer's chat template, with the
generation prompt added) or a plain string (raw text, fed as is: completion mode).

Usage:
    from selftune.generation import HFGenerator, SamplingParams
    gen = HFGenerator(model, tokenizer, batch_size=16)
    [[answer]] = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams())
    answer.text, answer.finish_reason          # 'Hello! ...', 'stop'

Sampling is reproducible per (seed, prompt text, sample index), whatever the batch size or the
other prompts in the batch: every row owns a seeded random stream and draws its next token by
inverse-CDF sampling from its own distribution (one uniform number per row per step).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from selftune.errors import ConfigError, MissingExtraError
from selftune.models import end_of_turn_ids

# Raw text, or a chat as role/content dicts (`selftune.records.Message.model_dump()`), which is what
# chat templates take.
Prompt = str | list[dict[str, str]]
# stop: the model closed its turn; length: the token cap; rejected: early rejection stopped an
# answer whose prefix already failed a check that cannot recover (`Completion.rejected_by` names it).
FinishReason = Literal["stop", "length", "rejected"]
# Called after each batch with (prompts finished so far, new tokens generated in this batch).
ProgressCallback = Callable[[int, int], None]
# Called by stages whose work is not generation or training steps (evaluation per model and prompt
# set, DPO's reference pass, export) with (what is being done, units done so far, units in all).
PhaseCallback = Callable[[str, int, "int | None"], None]
# Early rejection: called with (prompt index, sample index, answer text so far), returns the name of
# a check the answer can no longer pass (the answer stops there, finish_reason "rejected"), or None.
StopWhen = Callable[[int, int, str], "str | None"]


def phase_progress(phase: PhaseCallback | None, label: str, total: int) -> ProgressCallback | None:
    """A generator's progress callback reporting to `phase` under `label` (prompts done of `total`)."""
    if phase is None:
        return None
    phase(label, 0, total)
    return lambda done, _tokens: phase(label, done, total)


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # answers per prompt
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass; 1 keeps the whole distribution
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    prompt_index: int
    sample_index: int
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int  # includes the stop token when finish_reason == "stop"
    seed: int | None  # the row's own sampling seed; None when greedy
    rejected_by: str | None = None  # the failed check when finish_reason == "rejected"


class Generator(Protocol):
    """Anything that answers prompts. Tests use a mock that returns queued answers."""

    name: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        stop_when: StopWhen | None = None,
    ) -> list[list[Completion]]:
        """One list of `params.n` completions per prompt, in the order of `prompts`."""
        ...


def row_seed(seed: int, prompt_text: str, sample_index: int) -> int:
    """A 63-bit seed for one answer, stable under any reordering or batching of prompts."""
    digest = hashlib.sha256(f"{seed}\x00{sample_index}\x00{prompt_text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def render_prompt(tokenizer, prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template: pass raw-text prompts (strings) instead of messages")
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    text = render_prompt(tokenizer, prompt)
    # A rendered chat template already holds its special tokens (BOS included where the template
    # writes one); raw text gets the tokenizer's usual specials.
    return tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]


# The top-p nucleus is looked for among each row's top tokens, in stages of this many (partial
# sorts); rows whose nucleus outgrows the last stage fall back to a full sort. Exact either way.
NUCLEUS_STAGES = (64, 512)


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top-p nucleus: (ids, sizes), ids (rows, width) in ascending token-id order,
    padded with the vocabulary size, and sizes (rows,) the nucleus sizes. A token is in the nucleus
    while the mass of the tokens above it is below top_p (the top token always is), and so is every
    token as likely as the least likely one kept (ties)."""
    rows, vocab = probs.shape
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (row numbers, ids, sizes)
    todo = torch.arange(rows, device=probs.device)
    for k in (*[k for k in NUCLEUS_STAGES if k < vocab], vocab):
        if k < vocab:
            values, ids = probs[todo].topk(k, dim=-1)  # descending
        else:
            values, ids = probs[todo].sort(dim=-1, descending=True)
        sizes = ((values.double().cumsum(dim=-1) - values.double()) < top_p).sum(dim=-1, keepdim=True)
        floor = values.gather(1, sizes - 1)
        sizes = (values >= floor).sum(dim=-1)  # with the tokens that tie the least likely kept one
        # Complete when the shortlist holds a token below that one: every token outside it is less
        # likely still. (A full sort always is.)
        inside = sizes < k if k < vocab else torch.ones_like(sizes, dtype=torch.bool)
        if inside.any():
            width = int(sizes[inside].max())
            beyond = torch.arange(width, device=probs.device)[None] >= sizes[inside, None]
            chosen = ids[inside, :width].masked_fill(beyond, vocab).sort(dim=-1).values
            found.append((todo[inside], chosen, sizes[inside]))
        todo = todo[~inside]
        if not len(todo):
            break
    width = max(chosen.shape[1] for _, chosen, _ in found)
    ids = torch.full((rows, width), vocab, dtype=torch.long, device=probs.device)
    sizes = torch.empty(rows, dtype=torch.long, device=probs.device)
    for where, chosen, size in found:
        ids[where, : chosen.shape[1]] = chosen
        sizes[where] = size
    return ids, sizes


def draw_tokens(
    logits: torch.Tensor, generators: Sequence[torch.Generator | None], params: SamplingParams
) -> torch.Tensor:
    """Next token per row (rows,): argmax when greedy; otherwise inverse-CDF sampling from the
    temperature-scaled, top-p-truncated distribution with one uniform number from each row's own
    generator, so a row's draw never depends on its batch neighbours.

    The CDF runs over the kept tokens in token-id order, not in probability order: another batch
    shape changes logits in their last bits, which can reorder near-equal probabilities and, in a
    sorted CDF, move every later token; in id order it only moves each boundary by that rounding.
    With top_p < 1 the CDF covers the nucleus only (`_nucleus`), not the whole vocabulary: the
    same sums, since the tokens left out add nothing, at a fraction of the cost (the sampler was
    ~6% of a decode step on the demo's workload).
    """
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = (logits.float() / params.temperature).softmax(dim=-1)  # (rows, vocab)
    uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(probs.device)
    if params.top_p >= 1.0:
        cumulative = probs.double().cumsum(dim=-1)  # (rows, vocab), token-id order
        targets = (uniforms * cumulative[:, -1]).unsqueeze(1)
        return torch.searchsorted(cumulative, targets, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)
    ids, sizes = _nucleus(probs, params.top_p)
    vocab = probs.shape[-1]
    weights = probs.gather(1, ids.clamp(max=vocab - 1)).double().masked_fill_(ids == vocab, 0.0)
    cumulative = weights.cumsum(dim=-1)  # (rows, width): the nucleus in token-id order, zeros after
    targets = (uniforms * cumulative[:, -1]).unsqueeze(1)
    position = torch.searchsorted(cumulative, targets, right=True).squeeze(1)
    position = torch.minimum(position, sizes - 1)  # u * total rounding up to total: the last kept token
    return ids.gather(1, position[:, None]).squeeze(1)


class _RowSampler:
    """Logits processor that turns `generate`'s greedy decoding into per-row seeded sampling: it
    draws each row's token with `draw_tokens` and returns logits that are 0 there and -inf
    elsewhere, which generate()'s argmax then picks."""

    def __init__(self, seeds: list[int], params: SamplingParams):
        self.generators = []
        for seed in seeds:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
            self.generators.append(generator)
        self.params = params

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = draw_tokens(scores, self.generators, self.params)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), tokens] = 0.0
        return out


class HFGenerator:
    """Batched generation with a transformers model: left padding, length-sorted batches, KV cache.

    `batch_size` counts sequences (prompts x samples) per forward pass.
    """

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 16, stop_ids: list[int] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        self.stop_ids = stop_ids or end_of_turn_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        stop_when: StopWhen | None = None,
    ) -> list[list[Completion]]:
        """`stop_when` gives the same answers as the continuous engine's early rejection, but a
        rejected row keeps its place in the batch until the batch ends: no time is saved here."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        prompts_per_batch = max(1, self.batch_size // params.n)
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        device = next(self.model.parameters()).device
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,  # sampling, when asked for, happens in _RowSampler
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        done = 0
        for start in range(0, len(order), prompts_per_batch):
            batch = order[start : start + prompts_per_batch]
            rows = [(i, s) for i in batch for s in range(params.n)]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for row, (i, _) in enumerate(rows):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)  # left padding
                attention[row, width - len(ids) :] = 1
            processors = LogitsProcessorList()
            seeds: list[int | None] = [None] * len(rows)
            if not params.greedy:
                seeds = [row_seed(params.seed, texts[i], s) for i, s in rows]
                processors.append(_RowSampler(seeds, params))
            early = _EarlyStop(self, rows, width, stop_when, params.max_new_tokens) if stop_when else None
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([early] if early else []),
            )
            new_tokens = output[:, width:].tolist()  # (rows, <= max_new_tokens)
            batch_tokens = 0
            for row, (i, s) in enumerate(rows):
                rejected = early.rejected.get(row) if early else None
                completion = self._finish(new_tokens[row], i, s, len(encoded[i]), seeds[row], rejected)
                batch_tokens += completion.completion_tokens
                results[i][s] = completion
            done += len(batch)
            if progress:
                progress(done, batch_tokens)
        return results  # type: ignore[return-value]

    def _finish(self, tokens, prompt_index, sample_index, prompt_tokens, seed, rejected=None) -> Completion:
        if rejected is not None:  # (answer length when rejected, failed check)
            length, check = rejected
            return Completion(
                prompt_index=prompt_index,
                sample_index=sample_index,
                text=self.tokenizer.decode(tokens[:length], skip_special_tokens=True),
                finish_reason="rejected",
                prompt_tokens=prompt_tokens,
                completion_tokens=length,
                seed=seed,
                rejected_by=check,
            )
        stop = next((k for k, t in enumerate(tokens) if t in self.stop_ids), None)
        kept = tokens if stop is None else tokens[:stop]
        return Completion(
            prompt_index=prompt_index,
            sample_index=sample_index,
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            finish_reason="length" if stop is None else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) if stop is None else stop + 1,
            seed=seed,
        )


class _EarlyStop:
    """A stopping criterion asking `stop_when` about every row still running after each step;
    records (answer length, failed check) per rejected row."""

    def __init__(
        self, generator: HFGenerator, rows: list[tuple[int, int]], prompt_width: int, stop_when: StopWhen, cap: int
    ):
        self.generator, self.rows, self.width, self.stop_when = generator, rows, prompt_width, stop_when
        self.cap = cap  # max_new_tokens: an answer at the cap ends by length, as in the engine
        self.rejected: dict[int, tuple[int, str]] = {}
        self.stopped: set[int] = set()

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, ids in enumerate(input_ids[:, self.width :].tolist()):
            if row in self.stopped:
                done[row] = True
                continue
            if ids[-1] in self.generator.stop_ids or len(ids) >= self.cap:
                self.stopped.add(row)
                continue
            text = self.generator.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
            failed = self.stop_when(*self.rows[row], text)
            if failed is not None:
                self.rejected[row] = (len(ids), failed)
                self.stopped.add(row)
                done[row] = True
        return done


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
                )
            )
        if progress:
            progress(len(texts), sum(c.completion_tokens for r in results for c in r))
        return results


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


@contextlib.contextmanager
def open_generator(
    spec: str,
    *,
    backend: str = "auto",
    batch_size: int = 32,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    tensor_parallel_size: int = 1,
    replicas: int = 1,
    in_process: bool = False,
) -> Iterator[Generator]:
    """Load a model spec behind a Generator, and unload it when the block ends.

    backend: 'hf', 'continuous', 'vllm' (error naming the extra when vLLM is missing), or 'auto'
    (vLLM when installed on a GPU machine, else the continuous engine; see `make_generator`).
    `replicas` > 1 runs that many copies of the model in child processes, each answering a share
    of the prompts (`selftune.replicas`); vLLM always runs in a child process (in-process teardown
    does not free GPU memory) unless `in_process` (what a replica itself asks for).
    """
    from selftune.models import load_model, load_tokenizer, resolve_model_path, unload

    check_backend(backend)
    backend = resolved_backend(backend)
    if backend == "vllm":
        VLLMGenerator.require()
    if not in_process and in_child_processes(backend, replicas):
        from selftune.replicas import ReplicaGenerator

        replicated = ReplicaGenerator(
            spec,
            replicas=replicas,
            backend=backend,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
        )
        try:
            yield replicated
        finally:
            replicated.close()
        return
    # Otherwise 'auto' stays 'auto' for make_generator: the continuous engine when its self-check
    # passes on this model, else the HF backend (it used to become 'continuous' here, which made a
    # model the engine cannot serve, such as Gemma2, an error instead of a fallback).
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    if backend == "vllm":
        generator = VLLMGenerator(
            resolve_model_path(spec), tokenizer, tensor_parallel_size=tensor_parallel_size, dtype=dtype
        )
        try:
            yield generator
        finally:
            del generator
            gc.collect()
        return
    model = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code)
    generator = make_generator(model, tokenizer, backend=backend, batch_size=batch_size)
    try:
        yield generator
    finally:
        generator.model = None
        unload(model)


def resolved_backend(backend: str) -> str:
    """'auto' becomes 'vllm' where vLLM is installed on a GPU machine; otherwise the backend stays
    as given ('auto' is then decided by `make_generator` on the loaded model)."""
    return "vllm" if backend == "auto" and vllm_available() else backend


def in_child_processes(backend: str, replicas: int) -> bool:
    """Whether `open_generator` serves the model from child processes: several replicas, or vLLM."""
    return replicas > 1 or resolved_backend(backend) == "vllm"


def generates_in_children(cfg) -> bool:
    """Whether the run's generation happens in child processes (replicas, or vLLM), so a stage
    that has loaded the model itself must not generate with that copy."""
    return in_child_processes(cfg.generation.backend, cfg.generation.replicas)


def open_configured(spec: str, cfg) -> Iterator[Generator]:
    """`open_generator` for `spec` with the run's generation settings (backend, batch size,
    tensor parallelism, replicas) and model settings (dtype, trust_remote_code)."""
    return open_generator(
        spec,
        backend=cfg.generation.backend,
        batch_size=cfg.generation.batch_size,
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
        tensor_parallel_size=cfg.generation.tensor_parallel_size,
        replicas=cfg.generation.replicas,
    )


BACKENDS = ("auto", "hf", "continuous", "vllm")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"generation backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


# Prompts the continuous engine's logits are checked on before it serves a model.
_CHECK_PROMPTS = [
    [{"role": "user", "content": "Name three colors."}],
    [{"role": "user", "content": "Write one sentence about the sea, all in lowercase."}],
]


def make_generator(model, tokenizer, *, backend: str = "auto", batch_size: int = 32) -> Generator:
    """A generator around an already loaded transformers model: 'hf' (`model.generate`) or
    'continuous' (`selftune.engine`); 'auto' picks the continuous engine when its logits match a
    plain forward of this model (checked on two prompts), else the HF backend with a warning."""
    check_backend(backend)
    if backend == "hf":
        return HFGenerator(model, tokenizer, batch_size=batch_size)
    from selftune.engine import ContinuousGenerator, engine_supports

    engine = ContinuousGenerator(model, tokenizer, batch_size=batch_size)
    reason = engine_supports(
        engine, _CHECK_PROMPTS if getattr(tokenizer, "chat_template", None) else ["Name three colors:", "The sea is"]
    )
    if reason is None:
        return engine
    if backend == "continuous":
        raise ConfigError(
            f"the continuous engine cannot serve this model: {reason}; use generation.backend: hf or auto"
        )
    logging.getLogger("selftune.generation").warning(
        "continuous engine off for this model (%s); using the HF backend", reason
    )
    return HFGenerator(model, tokenizer, batch_size=batch_size)
