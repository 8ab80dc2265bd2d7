"""The Hugging Face backend: batched `model.generate` with selftune's per-row sampler; the
reference semantics the other engines are checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from selftune.generation.sampling import RowSampler, encode_prompt, render_prompt, row_seed
from selftune.generation.types import Completion, ProgressCallback, Prompt, SamplingParams, StopWhen
from selftune.models import end_of_turn_ids
from selftune.models.limits import fitting_slots

# transformers is imported where a generation config is built (its model classes cost ~3 s).


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

        if not prompts:
            return []
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        capacity = max(len(e) for e in encoded) + params.max_new_tokens
        rows_per_batch = fitting_slots(self.model, max(self.batch_size, params.n), params.n, capacity)
        prompts_per_batch = max(1, rows_per_batch // params.n)
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        device = next(self.model.parameters()).device
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,  # sampling, when asked for, happens in RowSampler
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
                processors.append(RowSampler(seeds, params))
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
                token_ids=tuple(int(t) for t in tokens[:length]),
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
            token_ids=tuple(int(t) for t in (tokens if stop is None else tokens[: stop + 1])),
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
