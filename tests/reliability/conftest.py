"""Shared pieces of the reliability suite: a finished tiny run to copy, the in-process CLI runner
with its guards (no model may load while input is being checked), and the totals it prints."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from harness import OUTCOMES, ModelLoaded, Outcome


@pytest.fixture
def cli(monkeypatch, capsys, patch_everywhere):
    """Run `selftune ARGS` in this process as the console script does (`selftune.cli.main`), with
    every load of model weights forbidden; returns the exit status, the console text and any escaped error."""
    import transformers

    import selftune.models

    def forbidden_by(who: str):
        def forbidden(*args, **kwargs):
            raise ModelLoaded(f"{who} loaded a model: {args[:2]}")

        return forbidden

    # selftune's own loaders, wherever a module bound them; transformers' behind them, in depth.
    # A tokenizer may load (a few MB of files, no weights): the context-window check counts each
    # prompt's tokens before any weights load.
    for name in ("load_model", "convert_gguf"):
        patch_everywhere(selftune.models, name, forbidden_by("selftune"))
    for cls in (
        transformers.AutoModelForCausalLM,
        transformers.AutoModelForSequenceClassification,
    ):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(forbidden_by("transformers")))
    monkeypatch.setenv("COLUMNS", "4000")  # no wrapped lines in rich's boxes

    def invoke(args: list[str]) -> Outcome:
        from selftune.cli import main

        capsys.readouterr()
        status, error = None, None
        monkeypatch.setattr(sys, "argv", ["selftune", *map(str, args)])  # as the console script sees it
        try:
            main()
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - a traceback is what the suite counts
            error = exc
        captured = capsys.readouterr()
        return Outcome(status, captured.out + captured.err, error)

    return invoke


def pytest_terminal_summary(terminalreporter):
    if not OUTCOMES:
        return
    counts = Counter(outcome for _, outcome, _ in OUTCOMES)
    lost = sum(size for _, _, size in OUTCOMES)
    terminalreporter.write_sep("-", "reliability totals")
    terminalreporter.write_line(
        f"{len(OUTCOMES)} cases: {counts['clear error']} clear errors, {counts['recovered']} faults recovered, "
        f"{counts['traceback']} tracebacks, {counts['silent accept']} silent accepts, "
        f"{counts['model loaded']} models loaded before the input was checked, "
        f"{counts['unclear']} errors without the expected message, {lost} bytes of finished work lost"
    )
