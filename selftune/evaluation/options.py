"""`selftune evaluate`'s options applied to a config, each checked before anything runs (a typo
must not rewrite a finished evaluation); a bad one is an `OptionError` naming the option."""

from __future__ import annotations

from pathlib import Path

from selftune.config import EVALUATED_MODELS, PipelineConfig, ScorerSection
from selftune.data.benchmarks import parse_benchmark
from selftune.errors import SelftuneError


class OptionError(SelftuneError):
    """A command-line option with a bad value; `option` names it (`--models`, `evaluate.lm_eval.limit`)."""

    def __init__(self, option: str, problem: str):
        super().__init__(problem)
        self.option = option


def apply_evaluate_options(
    cfg: PipelineConfig,
    *,
    models: str | None = None,
    judge: bool = False,
    judge_model: str | None = None,
    benchmarks: list[str] = (),
    limit: int | None = None,
    tasks: list[str] = (),
    num_fewshot: int | None = None,
    task_limit: float | None = None,
    chat_template: bool | None = None,
    tasks_from: Path | None = None,
    max_new_tokens: int | None = None,
    verifier: str | None = None,
) -> PipelineConfig:
    """`cfg` with the options given (None and empty lists leave a setting as it is)."""
    if verifier is not None:
        try:
            cfg.sample.scorer = ScorerSection(kind="function", function=verifier)
        except ValueError as exc:
            problem = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise OptionError("--verifier", problem.removeprefix("Value error, ")) from None
    if models is not None:
        names = [name.strip() for name in models.split(",") if name.strip()]
        unknown = [name for name in names if name not in EVALUATED_MODELS]
        if unknown or not names:
            raise OptionError(
                "--models",
                f"unknown model name(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(EVALUATED_MODELS)}",
            )
        cfg.evaluate.models = names
    if judge or judge_model:
        cfg.evaluate.judge, cfg.evaluate.judge_model = True, judge_model or cfg.evaluate.judge_model
    if benchmarks:
        for item in benchmarks:
            try:
                parse_benchmark(item)
            except ValueError as exc:
                raise OptionError("--benchmark", str(exc)) from None
        cfg.evaluate.benchmarks = list(benchmarks)
    if limit is not None:
        cfg.evaluate.benchmark_limit = limit
    lm_eval = {
        "tasks": list(tasks) or None,
        "num_fewshot": num_fewshot,
        "limit": task_limit,
        "chat_template": chat_template,
        "include_path": str(tasks_from) if tasks_from else None,
    }
    for key, value in lm_eval.items():
        if value is not None:
            try:
                setattr(cfg.evaluate.lm_eval, key, value)
            except ValueError as exc:  # pydantic's ValidationError: the field's own message
                problem = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                raise OptionError(f"evaluate.lm_eval.{key}", problem) from None
    if max_new_tokens is not None:
        cfg.evaluate.benchmark_max_new_tokens = max_new_tokens
    return cfg
