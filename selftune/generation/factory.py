"""`open_generator`: load a model spec behind a Generator (in this process, or in replicas and vLLM
child processes) and unload it when done; `open_configured` does it with a run's settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from selftune.generation.local import check_backend, open_local
from selftune.generation.replicas import ReplicaGenerator
from selftune.generation.types import Generator, SamplingParams
from selftune.generation.vllm import VLLMGenerator, vllm_available


@contextlib.contextmanager
def open_generator(
    spec: str,
    *,
    backend: str = "auto",
    batch_size: int = 32,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    tensor_parallel_size: int = 1,
    replicas: int = 1,
) -> Iterator[Generator]:
    """Load a model spec behind a Generator, and unload it when the block ends.

    backend: 'hf', 'continuous', 'vllm' (error naming the extra when vLLM is missing), or 'auto'
    (vLLM when installed on a GPU machine, else the continuous engine; see `make_generator`).
    `replicas` > 1 runs that many copies of the model in child processes, each answering a share
    of the prompts (`selftune.generation.replicas`); vLLM always runs in a child process
    (in-process teardown does not free GPU memory). Otherwise the model loads in this process
    (`open_local`).
    """
    check_backend(backend)
    backend = resolved_backend(backend)
    if backend == "vllm":
        VLLMGenerator.require()
    options = dict(
        backend=backend,
        batch_size=batch_size,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        tensor_parallel_size=tensor_parallel_size,
    )
    if not in_child_processes(backend, replicas):
        with open_local(spec, **options) as generator:
            yield generator
        return
    replicated = ReplicaGenerator(spec, replicas=replicas, **options)
    try:
        yield replicated
    finally:
        replicated.close()


def resolved_backend(backend: str) -> str:
    """'auto' becomes 'vllm' where vLLM is installed on a GPU machine; otherwise the backend stays
    as given ('auto' is then decided by `make_generator` on the loaded model)."""
    return "vllm" if backend == "auto" and vllm_available() else backend


def in_child_processes(backend: str, replicas: int) -> bool:
    """Whether `open_generator` serves the model from child processes: several replicas, or vLLM."""
    return replicas > 1 or resolved_backend(backend) == "vllm"


def generates_in_children(cfg) -> bool:
    """Whether the run's generation happens in child processes (replicas, or vLLM), so a stage
    that has loaded the model itself must not generate with that copy."""
    return in_child_processes(cfg.generation.backend, cfg.generation.replicas)


# The settings `open_configured` reads that cannot change an answer, so a stage that generates
# reads them without hashing them: every answer is sampled from its own seed (greedy answers do not
# depend on the batch), whatever the batch, the devices or the number of replicas; the trust flag
# only permits loading a model's code.
UNHASHED_GENERATION_SETTINGS = (
    "generation.batch_size",
    "generation.tensor_parallel_size",
    "generation.replicas",
    "model.trust_remote_code",
    # Which prompts are answered, not how: with `error` (the default) a prompt over the context
    # window stops the stage before it writes anything, and with `skip` the skipped prompts are
    # counted in the manifest; the check runs again whenever the stage is reached, reused or not.
    "generation.over_context",
)


def sampling_params(cfg, *, n: int, seed: int) -> SamplingParams:
    """The run's sampling settings (`sample.temperature`, `sample.top_p`,
    `generation.max_new_tokens`) for `n` answers per prompt drawn from `seed`."""
    return SamplingParams(
        n=n,
        temperature=cfg.sample.temperature,
        top_p=cfg.sample.top_p,
        max_new_tokens=cfg.generation.max_new_tokens,
        seed=seed,
    )


def open_configured(spec: str, cfg) -> Iterator[Generator]:
    """`open_generator` for `spec` with the run's generation settings (backend, batch size,
    tensor parallelism, replicas) and model settings (dtype, trust_remote_code)."""
    return open_generator(
        spec,
        backend=cfg.generation.backend,
        batch_size=cfg.generation.batch_size,
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
        tensor_parallel_size=cfg.generation.tensor_parallel_size,
        replicas=cfg.generation.replicas,
    )
