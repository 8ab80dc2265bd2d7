"""The stages of the loop, one module each, each runnable alone (its command) and by
`selftune run`. A stage is `stage(run, cfg, ...) -> Path`: it declares what it reads (a
`StageSpec`), validates all of its input before loading a model, and records its outputs in its
manifest.

    prompts ─► sample ─► sft_data ─► sft ─► pairs ─► dpo ─► evaluate ─► report

To add a stage: a module here with its `StageSpec` and stage function, its name in
`selftune.run.plan`, a branch in `selftune.pipeline.run_step`, and a command in `selftune.cli`.
"""
