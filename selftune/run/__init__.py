"""The run folder and its lineage: how a stage records what it read and wrote, so a rerun can
tell what is still valid.

    runs/<name>/
      config.yaml              resolved config of the whole run
      .lock                    held by the one process writing this run   (`lock`)
      round-1/<stage>/         each stage writes only inside its own folder
          manifest.json        written last: status, config hash, inputs and outputs with sha256,
                               package versions, timings, metrics          (`manifest`)

- `files`: sha256 digests (cached per process), atomic writes of files and folders, JSONL.
- `manifest`: the manifest schema and `stage_state` (is a stage complete and still valid?).
- `spec`: `StageSpec`, what a stage declares it reads, and the config view that enforces it.
- `folder`: `Run`, the one stage preamble (`Run.begin`) and `Run.stage` (manifest written last).
- `lock`: one writer per run.
- `plan`: which stage folders a run of N rounds has, in order.
"""
