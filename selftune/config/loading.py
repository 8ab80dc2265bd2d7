"""Presets, YAML files and `key.path=value` overrides resolved into one `PipelineConfig`, with
errors that name the key (and the closest valid one) or the file and line.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from selftune.config.sections import PipelineConfig
from selftune.errors import ConfigError

PRESETS_DIR = Path(__file__).parent.parent / "configs"  # selftune/configs


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        match = _closest(name, preset_names())
        hint = f"; did you mean {match!r}?" if match else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; presets: {', '.join(preset_names())}")
    return path


def load_config(
    preset: str | None = None,
    files: list[Path | str] = (),
    overrides: list[str] = (),
) -> PipelineConfig:
    """Defaults, then the preset, then each YAML file, then `key.path=value` overrides."""
    data: dict[str, Any] = {}
    sources: list[str] = []
    for path in ([preset_path(preset)] if preset else []) + [Path(f) for f in files]:
        loaded = _read_yaml(Path(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
        _deep_merge(data, loaded)
        sources.append(str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
        _set_dotted(data, key.strip(), value)
        sources.append(f"--set {item}")
    return validate_config(data, source=", ".join(sources) or "defaults")


def _read_yaml(path: Path) -> Any:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(exc)})") from None


def _yaml_problem(exc: Exception) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at column {mark.column + 1}" if problem and mark else str(exc).splitlines()[0]


def validate_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}:\n" + "\n".join(_describe(e) for e in exc.errors())) from None


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _describe(error: dict) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        parent = _section_at(loc[:-1])
        fields = list(parent.model_fields) if parent else []
        match = _closest(loc[-1], fields)
        hint = f"; did you mean {'.'.join(loc[:-1] + [match])!r}?" if match else ""
        return f"  unknown key {key!r}{hint}"
    return f"  {key}: {error['msg']} (got {error.get('input')!r})"


def _closest(word: str, options: list[str]) -> str | None:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if match:
        return match[0]
    # Abbreviations and long forms ('rank' for 'r', 'lr' for 'learning_rate') share a prefix.
    prefixed = [o for o in options if word.startswith(o) or o.startswith(word)]
    return min(prefixed, key=len) if prefixed else None


def _section_at(path: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = PipelineConfig
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _deep_merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    data[parts[-1]] = value
