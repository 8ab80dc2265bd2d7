"""The `selftune` command's commands, by group, each only parsing its options, calling one library
function and printing what it did; `selftune.cli` assembles them into one command.

- `loop`: `run` and one command per stage (`prompts build`, `sample`, `sft-data`, `sft`, `pairs`, `dpo`).
- `results`: `evaluate`, `report`, `compare`.
- `tools`: `generate`, `validate`, `config`, `doctor`, `merge`, `inspect`, `export`.
- `options`: the options several commands share, and `stage_command` (a stage command's run,
  round, preset, config and overrides, under the run's lock).

Each command imports the stage or tool it runs in its body: those pull in torch (about 2 s to
import) and the model code behind it, which `--help`, `validate` and `config` never need.
"""
