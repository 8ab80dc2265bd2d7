"""Typed configuration: one pydantic model per stage plus `PipelineConfig`; presets; YAML overrides.

Every field has a default and a one-line description (`sections`). YAML files (presets in
`selftune/configs/` and user files) only hold overrides of those defaults (`loading`). Unknown keys
are errors that name the key and the closest valid one.

Usage:
    from selftune.config import load_config
    cfg = load_config(preset="demo", files=["my.yaml"], overrides=["dpo.beta=0.2"])
    cfg.dpo.beta                                   # 0.2

    selftune config show --preset recipe-32b
"""

from selftune.config.base import Section
from selftune.config.loading import (
    PRESETS_DIR,
    dump_config,
    load_config,
    preset_names,
    preset_path,
    validate_config,
)
from selftune.config.sections import (
    ACCELERATE_CONFIGS,
    DEFAULT_PASS_THRESHOLD,
    EVALUATED_MODELS,
    EvaluateSection,
    GenerationSection,
    LaunchSection,
    LmEvalSection,
    ModelSection,
    PairsSection,
    PipelineConfig,
    PromptsSection,
    SampleSection,
    ScorerSection,
    SFTDataSection,
    TrackingSection,
)
from selftune.config.training import DPOSection, GRPOSection, LoraSection, SFTSection, TrainSection

__all__ = [
    "ACCELERATE_CONFIGS",
    "DEFAULT_PASS_THRESHOLD",
    "EVALUATED_MODELS",
    "PRESETS_DIR",
    "DPOSection",
    "EvaluateSection",
    "GenerationSection",
    "GRPOSection",
    "LaunchSection",
    "LmEvalSection",
    "LoraSection",
    "ModelSection",
    "PairsSection",
    "PipelineConfig",
    "PromptsSection",
    "SFTDataSection",
    "SFTSection",
    "SampleSection",
    "ScorerSection",
    "Section",
    "TrackingSection",
    "TrainSection",
    "dump_config",
    "load_config",
    "preset_names",
    "preset_path",
    "validate_config",
]
