import pytest
from pydantic import BaseModel

from selftune.config.loading import load_config, preset_names
from selftune.config.sections import PipelineConfig
from selftune.errors import ConfigError


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("sft:\n  learnig_rate: 1.0e-4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(files=[path])
    assert "unknown key 'sft.learnig_rate'; did you mean 'sft.learning_rate'?" in str(caught.value)
    assert str(path) in str(caught.value)


def test_unknown_top_level_key_and_nested_section():
    with pytest.raises(ConfigError, match="unknown key 'rouds'; did you mean 'rounds'"):
        load_config(overrides=["rouds=2"])
    with pytest.raises(ConfigError, match="unknown key 'dpo.lora.rank'; did you mean 'dpo.lora.r'"):
        load_config(overrides=["dpo.lora.rank=8"])


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="sample.k"):
        load_config(overrides=["sample.k=0"])


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads(name):
    cfg = load_config(preset=name)
    assert cfg.name == name


def test_presets_cover_the_documented_ones():
    assert {"tiny", "demo", "recipe-32b"} <= set(preset_names())


def test_recipe_32b_carries_the_reviewed_dpo_settings():
    cfg = load_config(preset="recipe-32b")
    assert cfg.dpo.learning_rate == 5e-6 and cfg.dpo.beta == 0.1
    assert cfg.dpo.per_device_batch_size * cfg.dpo.gradient_accumulation == 4
    assert cfg.model.load_in_4bit and cfg.dpo.gradient_checkpointing and cfg.generation.backend == "vllm"


def test_overrides_apply_in_order(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("dpo:\n  beta: 0.3\n")
    assert load_config("tiny", [path]).dpo.beta == 0.3
    assert load_config("tiny", [path], ["dpo.beta=0.5"]).dpo.beta == 0.5


def _sections(model: type[BaseModel], seen=None):
    seen = seen if seen is not None else set()
    if model in seen:
        return seen
    seen.add(model)
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            _sections(field.annotation, seen)
    return seen


def test_every_field_has_a_default_and_a_description():
    for section in _sections(PipelineConfig):
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"
            assert not field.is_required(), f"{section.__name__}.{name} has no default"


def test_an_earlier_runs_config_with_the_unused_top_level_seed_still_loads(tmp_path):
    from selftune.config.loading import load_config

    path = tmp_path / "config.yaml"
    path.write_text("seed: 3\nrounds: 2\n")
    cfg = load_config(files=[path])
    assert cfg.rounds == 2 and "seed" not in cfg.model_dump()


@pytest.mark.parametrize(
    "override,named",
    [
        ("sft.learning_rate=.inf", "learning_rate"),
        ("dpo.beta=.nan", "beta"),
        ("sft.learning_rate=true", "learning_rate"),
        ("sample.k=true", "k"),
        ("name=../../x", "name"),
        ("name=a/b", "name"),
    ],
)
def test_values_that_were_silently_accepted_are_refused_by_name(override, named):
    """Issue 16 defect 7: infinite or NaN learning rates, `true` read as 1, and a run name that is a
    path (the run was written outside runs/) were accepted."""
    with pytest.raises(ConfigError, match=named):
        load_config("tiny", overrides=[override])


def test_a_reward_model_scorer_without_a_model_is_refused_with_the_config():
    """Issue 16 defect 3: it failed only after every answer had been generated."""
    with pytest.raises(ConfigError, match="reward_model"):
        load_config("tiny", overrides=["sample.scorer.kind=reward-model"])
    cfg = load_config("tiny", overrides=["sample.scorer.kind=reward-model", "sample.scorer.reward_model=/models/rm"])
    assert cfg.sample.scorer.reward_model == "/models/rm"
