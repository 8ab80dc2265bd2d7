"""lm-evaluation-harness tasks on an evaluated model (config `evaluate.lm_eval`, extra `eval`).

The harness does the work (task definitions, few-shot sampling, the chat template, metrics and
their standard errors); this module checks the tasks before any model loads and turns the
harness's results into one flat record per task for results.json, the report and `compare`.

Before a model loads, `check_tasks` finds every task (the harness's registry, plus the YAML files
under `include_path`) and loads its documents, so a misspelled task or data that is not on this
machine (offline, not in the datasets cache) is named up front instead of after the first model.

Usage:
    evaluate:
      lm_eval: {tasks: [arc_easy], num_fewshot: 0, limit: 200, chat_template: true}
    from selftune.evaluation.lmeval import check_tasks, run_tasks
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

from selftune.config.sections import LmEvalSection
from selftune.errors import ConfigError, MissingExtraError

# lm-evaluation-harness is an optional extra (`selftune[eval]`): imported where a task runs.

log = logging.getLogger(__name__)


def _require() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise MissingExtraError("evaluate.lm_eval.tasks need the eval extra: pip install 'selftune[eval]'")


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults, verbosity="ERROR")


def task_manager(section):
    """The harness's task registry: the YAML files under `include_path` alone when they define
    every task asked for (indexing the harness's own ~15k task files takes ~15 s), else both."""
    _require()
    include = None
    if section.include_path:
        folder = Path(section.include_path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"evaluate.lm_eval.include_path: {folder} is not a folder of task YAML files")
        include = str(folder.resolve())
        local = _task_manager(include, False)
        if all(task in local.all_tasks for task in section.tasks):
            return local
    return _task_manager(include, True)


@functools.lru_cache(maxsize=4)
def _checked(section_json: str) -> None:

    section = LmEvalSection.model_validate_json(section_json)
    manager = task_manager(section)
    unknown = [task for task in section.tasks if task not in manager.all_tasks]
    if unknown:
        where = f" or under {section.include_path}" if section.include_path else ""
        raise ConfigError(
            f"evaluate.lm_eval.tasks: {', '.join(unknown)} is not a task, group or tag of lm-evaluation-harness"
            f"{where}; `lm-eval ls tasks` lists them"
        )
    for task in section.tasks:
        try:
            manager.load([task])  # builds the task and loads its documents
        except Exception as exc:  # the harness raises whatever `datasets` or its YAML loader raised
            raise ConfigError(
                f"evaluate.lm_eval.tasks: {task}: its data could not be loaded ({type(exc).__name__}: {exc}); "
                "offline, load it once where the Hub is reachable (it stays in the datasets cache), or "
                "describe a task over local files in evaluate.lm_eval.include_path"
            ) from None


def check_tasks(section) -> None:
    """Every task exists and its data loads; raises ConfigError naming the first problem. Cached:
    the pipeline's check and the evaluate stage's own do the work once."""
    if section.tasks:
        _require()
        _checked(section.model_dump_json())


def _metric_name(key: str) -> str:
    """`acc,none` -> `acc`; a named filter stays (`exact_match,strict-match` -> `exact_match[strict-match]`)."""
    metric, _, filtered = key.partition(",")
    return metric if filtered in ("", "none") else f"{metric}[{filtered}]"


def flatten_results(results: dict) -> dict[str, dict]:
    """The harness's results -> {task: {metric: value, metric_stderr: value, n, num_fewshot,
    higher_is_better: {metric: bool}}}, numbers only (a stderr the harness could not compute,
    "N/A", is left out)."""
    out: dict[str, dict] = {}
    for task, values in results["results"].items():
        row: dict = {}
        for key, value in values.items():
            if key in ("alias", "name", "sample_len") or isinstance(value, (str, bool)) or value is None:
                continue
            row[_metric_name(key)] = round(float(value), 6)
        samples = results.get("n-samples", {}).get(task)
        if samples:
            row["n"] = samples["effective"]
        shots = results.get("n-shot", {}).get(task)
        if shots is not None:
            row["num_fewshot"] = shots
        better = results.get("higher_is_better", {}).get(task, {})
        row["higher_is_better"] = {_metric_name(k): v for k, v in better.items() if isinstance(v, bool)}
        out[task] = row
    return out


def run_tasks(model, tokenizer, section, progress=None) -> dict:
    """Run every task of `section` on the loaded `model`, one task at a time (so `progress("lm-eval",
    tasks done, tasks)` can follow them); returns {"tasks": {task: metrics}, "settings": ...}."""
    check_tasks(section)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = task_manager(section)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=section.batch_size)
    limit = None if section.limit is None else (int(section.limit) if section.limit >= 1 else section.limit)
    tasks: dict[str, dict] = {}
    for done, task in enumerate(section.tasks):
        if progress:
            progress("lm-eval", done, len(section.tasks))
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task],
            num_fewshot=section.num_fewshot,
            limit=limit,
            apply_chat_template=section.chat_template,
            fewshot_as_multiturn=section.fewshot_as_multiturn and section.chat_template,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=1000,  # the stderr of non-mean metrics; the harness's 100k takes minutes
            verbosity="WARNING",
        )
        tasks.update(flatten_results(results))
    if progress:
        progress("lm-eval", len(section.tasks), len(section.tasks))
    settings = {
        "num_fewshot": section.num_fewshot,
        "limit": section.limit,
        "chat_template": section.chat_template,
        "fewshot_as_multiturn": section.fewshot_as_multiturn and section.chat_template,
    }
    return {"tasks": tasks, "settings": settings}
