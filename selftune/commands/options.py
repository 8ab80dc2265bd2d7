"""Options several commands share, each defined once, and `stage_command`: the options of every
stage command (run folder, round, preset, config files, overrides) and its run lock."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import typer

from selftune.config.loading import preset_names
from selftune.run.folder import open_run

# Options shared by several commands, each defined once.
PresetOption = typer.Option(None, "--preset", help=f"Preset name: {', '.join(preset_names())}.")


ConfigOption = typer.Option([], "--config", help="YAML override files, applied in order.")


SetOption = typer.Option([], "--set", help="key.path=value overrides, applied last.")


TrustRemoteCodeOption = typer.Option(
    False, "--trust-remote-code", help="Allow model code from the checkpoint; off unless you trust it."
)


def stage_command(*, rounds: bool = True):
    """A stage command's shared options, defined here once: --run, --round (when `rounds`),
    --preset, --config and --set. The decorated function takes `(run, cfg, **its own options)`
    (and `round_number`) and runs under the run's lock."""

    def decorate(func):
        kind = inspect.Parameter.KEYWORD_ONLY
        own = [
            p.replace(kind=kind)
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.name not in ("run", "cfg", "round_number")
        ]
        run_option = typer.Option(..., "--run", help="Run directory (e.g. runs/demo).")
        round_option = typer.Option(1, "--round", help="Round number.")
        parameters = [
            inspect.Parameter("run_dir", kind, annotation=Path, default=run_option),
            *own,
            *([inspect.Parameter("round_number", kind, annotation=int, default=round_option)] if rounds else []),
            inspect.Parameter("preset", kind, annotation=str | None, default=PresetOption),
            inspect.Parameter("config", kind, annotation=list[Path], default=ConfigOption),
            inspect.Parameter("set_", kind, annotation=list[str], default=SetOption),
        ]

        @functools.wraps(func)
        def command(*, run_dir: Path, preset=None, config=(), set_=(), **options):
            run, cfg = open_run(run_dir, preset, list(config), list(set_))
            with run.lock():
                run.save_config_on_start(cfg)
                return func(run, cfg, **options)

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        del command.__wrapped__  # typer reads __signature__, not the wrapped function's
        return command

    return decorate
