"""`selftune generate`: answer every prompt of a JSONL file with a model (a stable interface for
other tools). Everything is checked before a model loads: the options, the output path and every
prompt row.

Input rows: `{"id", "messages"}` (rendered with the chat template) or `{"id", "prompt"}` (raw text).
Output rows, one per answer: `id`, `sample_index`, `response`, `model`, `finish_reason` (stop or
length), `prompt_tokens`, `completion_tokens`, `seed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from selftune.data.records import read_records
from selftune.generation.factory import open_generator
from selftune.generation.local import check_backend
from selftune.generation.preflight import ContextCheck, check_prompts
from selftune.generation.types import ProgressCallback, SamplingParams
from selftune.models import check_model_spec, resolve_dtype
from selftune.run.files import write_jsonl


class OutputIsAFolderError(ValueError):
    """`--out` names a folder; the output is one JSONL file."""


def answer_file(
    model: str,
    prompts: Path,
    out: Path,
    params: SamplingParams,
    *,
    backend: str = "auto",
    batch_size: int = 32,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    tensor_parallel_size: int = 1,
    replicas: int = 1,
    over_context: str = "error",
    progress: Callable[[int], contextlib.AbstractContextManager[ProgressCallback]] | None = None,
) -> tuple[list[dict], ContextCheck]:
    """Answer every row of `prompts` with `model` and write the answers to `out`; returns them and
    which prompts fit the model's context window (`over_context`: a prompt over it is an error, or
    skipped). `progress(prompt count)` gives the progress callback, made once the model has loaded."""
    check_backend(backend)
    if dtype != "auto":
        resolve_dtype(dtype, "cpu")
    if out.is_dir():
        raise OutputIsAFolderError(f"{out} is a folder; give the path of the JSONL file to write")
    rows = read_records(prompts, "generate")
    check_model_spec(model, trust_remote_code=trust_remote_code)
    inputs = [row.prompt if row.prompt is not None else [m.model_dump() for m in row.messages] for row in rows]
    fit = check_prompts(
        model,
        inputs,
        [row.id for row in rows],
        [params.max_new_tokens] * len(rows),
        where=str(prompts),
        budget_setting="--max-new-tokens",
        over_context=over_context,
        option="--over-context skip",
        trust_remote_code=trust_remote_code,
    )
    rows, inputs = [rows[k] for k in fit.kept], [inputs[k] for k in fit.kept]
    with open_generator(
        model,
        backend=backend,
        batch_size=batch_size,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        tensor_parallel_size=tensor_parallel_size,
        replicas=replicas,
    ) as generator:
        with progress(len(inputs)) if progress else contextlib.nullcontext() as callback:
            answers = generator.generate(inputs, params, progress=callback)
    records = [
        {
            "id": row.id,
            "sample_index": c.sample_index,
            "response": c.text,
            "model": model,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "seed": c.seed,
        }
        for row, completions in zip(rows, answers)
        for c in completions
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, records)
    return records, fit
