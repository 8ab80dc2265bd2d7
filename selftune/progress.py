"""What the person at the terminal sees while work runs: the consoles, a generation bar (prompts,
tokens/s), a training bar (optimizer steps, loss) and phase bars (evaluation, DPO's reference
pass, export). No bar is drawn when the console is not a terminal (CI logs): generation then
prints a plain line of its progress at most every 30 seconds, so a long job in a log is never silent.
"""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# No emoji codes: data such as the negative source "corrupt:repeat:" would print as an emoji.
console = Console(emoji=False)


err_console = Console(stderr=True, emoji=False)

# Off a terminal, generation prints one line of progress at most this often.
LOG_LINE_SECONDS = 30.0


def _start(progress: Progress) -> None:
    # A disabled bar (off a terminal) is never started: rich before 14.3 printed a blank line into
    # a log when it stopped one.
    if not progress.disable and not progress.live.is_started:
        progress.start()


def _stop(progress: Progress) -> None:
    if progress.live.is_started:
        progress.stop()


class GenerationProgress:
    """A progress bar over prompts with a live tokens/s figure; used as a ProgressCallback."""

    def __init__(self, total_prompts: int | None, label: str = "generating"):
        self.tokens = 0
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("prompts"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),  # ticks while a long prefill or decode step reports nothing
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
            disable=not err_console.is_terminal,
        )
        self.label, self.total = label, total_prompts
        self.task = self.progress.add_task(label, total=total_prompts, rate="")
        self.last_line = time.perf_counter()

    def __enter__(self):
        return self  # the bar starts with the first report (or `begin`): a stage that is skipped shows none

    def __exit__(self, *exc):
        _stop(self.progress)

    def begin(self) -> None:
        """Start the bar (and its clock) now, before the first prompt is done."""
        self.started = time.perf_counter()
        _start(self.progress)

    def __call__(self, prompts_done: int, new_tokens: int) -> None:
        _start(self.progress)
        self.tokens += new_tokens
        now = time.perf_counter()
        elapsed = now - self.started
        self.progress.update(self.task, completed=prompts_done, rate=f"{self.tokens / elapsed:.0f} tok/s")
        if self.progress.disable and now - self.last_line >= LOG_LINE_SECONDS:
            self.last_line = now
            err_console.print(
                f"{self.label}: {prompts_done}/{self.total or '?'} prompts, {self.tokens} tokens, "
                f"{self.tokens / elapsed:.0f} tok/s, {elapsed:.0f}s",
                soft_wrap=True,
                highlight=False,
            )

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)


class TrainingProgress:
    """A transformers TrainerCallback drawing a progress bar over optimizer steps, with the
    latest loss and the time left; off a terminal (CI logs), a plain line at most every 30 s."""

    def __init__(self, label: str, console: Console | None = None):
        self.console = console or err_console
        self.progress = Progress(
            TextColumn(f"[bold]{escape(label)}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),  # ticks through a long step
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.task = None
        self.label, self.shown, self.last_line = label, "", time.perf_counter()

    # The TrainerCallback protocol: the Trainer calls every on_* event it knows on each callback.
    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="")
        _start(self.progress)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)
        now = time.perf_counter()
        if self.progress.disable and now - self.last_line >= LOG_LINE_SECONDS:  # a log hears it too
            self.last_line = now
            self.console.print(
                f"{self.label}: step {state.global_step}/{state.max_steps} {self.shown}".rstrip(),
                soft_wrap=True,
                highlight=False,
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            shown = [f"loss {logs['loss']:.4f}"]
            # GRPO logs its reward and, with a KL term, the KL to its reference: both on the bar.
            if "reward" in logs:
                shown.append(f"reward {logs['reward']:.3f}")
            if "kl" in logs:
                shown.append(f"kl {logs['kl']:.4f}")
            self.shown = "  ".join(shown)
            self.progress.update(self.task, loss=self.shown)

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)
        _stop(self.progress)


class PhaseProgress:
    """A `PhaseCallback` (label, done, total) drawing one bar per label with the time left:
    evaluation per model and prompt set, DPO's reference pass, export. The display runs while a
    bar is unfinished and stops when all are, so a training bar can follow; nothing when the
    console is not a terminal."""

    def __init__(self, console: Console | None = None):
        self.console = console or err_console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.tasks: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(escape(label), total=total)
            _start(self.progress)
        self.progress.update(self.tasks[label], completed=done, total=total)
        if all(task.finished for task in self.progress.tasks):
            _stop(self.progress)


def configure_logging(handler: logging.Handler | None = None) -> None:
    """Show selftune's messages (a stage skipped or run and why, a resumed checkpoint, a drift
    warning) at INFO: through `handler` when given (the CLI's rich handler), else through a plain
    stream handler unless the application has configured logging itself."""
    logger = logging.getLogger("selftune")
    if handler is not None:
        logger.handlers = [handler]
    elif logger.handlers or logging.getLogger().handlers:
        return
    else:
        logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.INFO)
