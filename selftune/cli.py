"""The `selftune` command: a table of stage functions, one command each, assembled from the command
groups in `selftune.commands` (the loop and its stages, results, tools). This module is the entry
point: it shows selftune's log messages and turns a selftune error, an interrupt or a failure of
the machine into one sentence and a non-zero exit status.

Usage:
    selftune --help
    selftune run --preset demo
    selftune generate --model builtin:smollm2-135m-instruct --prompts prompts.jsonl --out out.jsonl
"""

from __future__ import annotations

import sys

import typer
from rich.logging import RichHandler
from rich.markup import escape

from selftune.commands import loop, results, tools
from selftune.errors import SelftuneError, system_problem
from selftune.progress import configure_logging, err_console

app = typer.Typer(
    name="selftune",
    help="Make a language model better at following instructions by training it on its own, checked outputs.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
for group in (loop.app, results.app, tools.app):
    app.add_typer(group)
app.add_typer(tools.config_app, name="config")
app.add_typer(loop.prompts_app, name="prompts")
app.add_typer(tools.inspect_app, name="inspect")


def main(argv: list[str] | None = None) -> None:
    """The console entry point: `argv` defaults to the process's arguments. A SelftuneError, an
    interrupt or a machine failure (disk full) ends in one sentence and a non-zero exit status."""
    # Stage modules log what people should see (a resumed checkpoint, a drift warning) under "selftune".
    configure_logging(RichHandler(console=err_console, show_time=False, show_path=False))
    widen_help_off_a_terminal()
    try:
        app(args=argv, prog_name="selftune")
    except SelftuneError as exc:
        fail(str(exc))
    except SystemExit as exc:
        if exc.code == 130:  # typer's exit for Ctrl-C (KeyboardInterrupt); it prints nothing
            # The stage's manifest already says it stopped; finished stages and checkpoints are kept.
            fail("interrupted; run the same command again to continue where it stopped", status=130)
        raise
    except Exception as exc:
        problem = system_problem(exc)
        if problem is None:
            raise
        fail(f"{problem}. Finished stages are kept; fix it and run the same command again.")


def widen_help_off_a_terminal() -> None:
    """Off a terminal (a CI log, `| tee`, a notebook) rich assumes 80 columns, and `--help` squeezed
    the descriptions of commands with long option names into a column a word wide, their names cut
    ("--benchmark-max-…"). A log does not wrap, so help there is 120 columns wide, unless
    TERMINAL_WIDTH or COLUMNS says otherwise."""
    import os

    import typer.rich_utils

    if not sys.stdout.isatty() and not os.environ.get("TERMINAL_WIDTH") and not os.environ.get("COLUMNS"):
        typer.rich_utils.MAX_WIDTH = 120


def fail(message: str, status: int = 1) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
