"""selftune: make a language model better at following instructions by training it on its own,
checked outputs (rejection-sampled LoRA SFT, then DPO on the merged SFT model).

The Python API does what the CLI does:

    import selftune
    cfg = selftune.load_config("demo", overrides=["dpo.beta=0.2"])
    results = selftune.run_pipeline("runs/demo-beta02", cfg)        # every stage, reused when valid

    run = selftune.Run("runs/demo-beta02")                          # or one stage at a time
    selftune.dpo_stage(run, cfg)

Names are imported on first use, so `import selftune` stays light (no torch until a stage runs).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "selftune.config",
    "PipelineConfig": "selftune.config",
    "Run": "selftune.run.folder",
    "run_pipeline": "selftune.pipeline",
    "configure_logging": "selftune.progress",
    "prompts_stage": "selftune.stages.prompts",
    "sample_stage": "selftune.stages.sample",
    "sft_data_stage": "selftune.stages.sft_data",
    "sft_stage": "selftune.stages.sft",
    "pairs_stage": "selftune.stages.pairs",
    "dpo_stage": "selftune.stages.dpo",
    "grpo_stage": "selftune.stages.grpo",
    "evaluate_stage": "selftune.stages.evaluate",
    "report_stage": "selftune.stages.report",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'selftune' has no attribute {name!r}")
