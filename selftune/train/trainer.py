"""The Trainer the training stages train with: it stops at the first non-finite loss and at a collapsed run.

This module imports transformers' Trainer (about 6 s); `selftune.train.launch.train_here` loads it
when a stage trains.
"""

from __future__ import annotations

import math

import torch
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback

from selftune.train.toolkit import NonFiniteLossError, TrainingCollapsedError


class TrainingGuard:
    """Mixin for a transformers Trainer (`GuardedTrainer`; the GRPO trainer) that stops at the
    first non-finite loss, and at a collapsed run: a gradient norm of exactly 0 (a LoRA update has
    a nonzero gradient unless the model saturated, as a far too high learning rate does; GRPO
    says when a zero is expected) or not finite. Both stop before any later checkpoint. The
    Trainer's own printing of raw log dicts is off: the logs go to the stage's log_history, and
    the console shows a progress bar when one is given."""

    def __init__(self, *args, **kwargs):

        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)

    def log(self, logs, *args, **kwargs):
        norm = logs.get("grad_norm")
        if norm is not None and ((norm == 0 and not self.zero_gradient_expected(logs)) or not math.isfinite(norm)):
            raise TrainingCollapsedError(
                f"training collapsed at step {self.state.global_step}: gradient norm {norm}. The model "
                f"stopped learning (a learning rate far too high does this; it is "
                f"{self.args.learning_rate:g}); lower it and run the stage again."
            )
        return super().log(logs, *args, **kwargs)

    def zero_gradient_expected(self, logs) -> bool:
        """Whether a gradient norm of 0 is what this step should have given (not a collapse)."""
        return False

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {self.state.global_step + 1}; training stopped. "
                f"The last good checkpoint stays in {self.args.output_dir}; lower the learning rate "
                "or check the data, then rerun to resume from it."
            )
        return loss


class GuardedTrainer(TrainingGuard, Trainer):
    """transformers' Trainer with the guard (SFT and DPO)."""
