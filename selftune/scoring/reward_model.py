"""A sequence-classification reward model as a scorer: the sigmoid of its logit."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from selftune.data.records import PromptRecord
from selftune.scoring.base import ScoreResult


class RewardModelScorer:
    """A sequence-classification reward model (one logit); score = sigmoid(logit)."""

    name = "reward-model"

    def __init__(self, model, tokenizer, *, pass_threshold: float = 0.5, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.pass_threshold = pass_threshold
        self.batch_size = batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id

    @torch.inference_mode()
    def score(self, prompt: PromptRecord, completions: Sequence[str]) -> list[ScoreResult]:
        messages = [m.model_dump() for m in prompt.messages]
        texts = [
            self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": c}], tokenize=False)
            for c in completions
        ]
        results = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            logits = self.model(**batch).logits[:, 0].float()  # (batch,)
            for logit in logits.tolist():
                value = 1 / (1 + math.exp(-logit))
                results.append(ScoreResult(value, value >= self.pass_threshold, {"reward_logit": logit}))
        return results
