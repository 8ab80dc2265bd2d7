"""Generation in child processes: data-parallel replicas of one model, and the home of vLLM.

Why child processes:
- vLLM does not give GPU memory back when its engine is deleted inside a process, so a stage
  that generates with vLLM and then trains or loads the next model would run out of memory. In a
  child process the memory goes when the process ends. vLLM therefore always runs in one.
- Data parallelism: each replica holds one copy of the model (its own GPU, or a tensor-parallel
  group of `tensor_parallel_size` GPUs for vLLM, or its share of the CPU cores) and answers its
  shard of the prompts.

Why not torch.distributed or vLLM's own data parallelism: the shards never talk to each other
(no gradients, no collectives), so a request queue per child is all that is needed, and the same
code serves every backend (the continuous engine, `model.generate`, vLLM).

Samples do not depend on the replica count: every answer's seed comes from (seed, prompt text,
sample index) (`selftune.generation.row_seed`), and the continuous and hf backends draw each
answer from its own stream, so a prompt gets the same answers whichever replica serves it. Prompts
are dealt round-robin (prompt i to replica i mod R), so every replica gets a similar mix.

Usage (through `selftune.generation.factory.open_generator`, which starts replicas when asked):
    with open_generator(spec, replicas=2) as gen:          # two processes, one CPU core each here
        answers = gen.generate(prompts, SamplingParams(n=4, temperature=0.8), stop_when=hook)

A `stop_when` hook crosses into the children, so it must be picklable (a module-level class, such
as `selftune.data.early_rejection.EarlyRejection`; not a closure).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import queue
import time
import traceback
from collections.abc import Sequence

import torch

from selftune.errors import ConfigError, SelftuneError
from selftune.generation.local import open_local
from selftune.generation.types import Completion, ProgressCallback, Prompt, Remapped, SamplingParams, StopWhen

logger = logging.getLogger("selftune.replicas")


# How long the parent waits for a message before checking that every child is still alive.
_POLL_SECONDS = 0.5


class GenerationError(SelftuneError):
    """A generation replica failed or died; the message names the replica and what it said."""


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES would list them."""

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(g) for g in range(torch.cuda.device_count())]


def replica_env(replicas: int, gpus_per_replica: int, gpus: list[str], cpu_threads: int) -> list[dict[str, str]]:
    """The environment each replica starts with: its own GPUs (CUDA_VISIBLE_DEVICES), or on a
    machine without GPUs its share of the CPU threads (at least one each)."""
    if not gpus:
        threads = str(max(1, cpu_threads // replicas))
        return [{"OMP_NUM_THREADS": threads, "SELFTUNE_REPLICA_THREADS": threads} for _ in range(replicas)]
    needed = replicas * gpus_per_replica
    if needed > len(gpus):
        raise ConfigError(
            f"generation.replicas {replicas} x {gpus_per_replica} GPU(s) each needs {needed} GPUs; "
            f"this process sees {len(gpus)} ({','.join(gpus)})"
        )
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(gpus[r * gpus_per_replica : (r + 1) * gpus_per_replica])}
        for r in range(replicas)
    ]


def shard(count: int, replicas: int) -> list[list[int]]:
    """Prompt indices per replica, round-robin: replica r answers prompts r, r+R, r+2R, ..."""
    return [list(range(r, count, replicas)) for r in range(replicas)]


def _serve(rank: int, spec: str, options: dict, requests, replies) -> None:
    """A replica's main loop: load the model once, answer each request, stop on None. Its
    environment (`replica_env`) was set by the parent before the start."""
    try:
        if "SELFTUNE_REPLICA_THREADS" in os.environ:
            torch.set_num_threads(int(os.environ["SELFTUNE_REPLICA_THREADS"]))
        with open_local(spec, **options) as generator:
            replies.put((rank, "ready", generator.name))
            while (request := requests.get()) is not None:
                prompts, params, stop_when, index = pickle.loads(request)

                def progress(done: int, tokens: int) -> None:
                    replies.put((rank, "progress", (done, tokens)))

                hook = Remapped(stop_when, index) if stop_when is not None else None
                answers = generator.generate(prompts, params, progress=progress, stop_when=hook)
                replies.put((rank, "done", answers))
    except BaseException as exc:  # noqa: BLE001 - everything a child hits is reported to the parent
        try:  # a selftune error travels as itself, so the parent raises what the stage would in-process
            sent = pickle.loads(pickle.dumps(exc)) if isinstance(exc, SelftuneError) else None
        except Exception:  # noqa: BLE001
            sent = None
        replies.put((rank, "error", sent or f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"))


class ReplicaGenerator:
    """`replicas` child processes, each serving one copy of the model behind the Generator
    interface; `generate` shards the prompts across them and returns the answers in order."""

    def __init__(
        self,
        spec: str,
        *,
        replicas: int,
        backend: str,
        batch_size: int,
        dtype: str,
        trust_remote_code: bool,
        tensor_parallel_size: int = 1,
        start_timeout: float = 1800.0,
    ):

        gpus_per_replica = tensor_parallel_size if backend == "vllm" else 1
        envs = replica_env(replicas, gpus_per_replica, visible_gpus(), torch.get_num_threads())
        options = {
            "backend": backend,
            "batch_size": batch_size,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": tensor_parallel_size,
        }
        # spawn, not fork: a forked child inherits the parent's torch threads and CUDA state.
        context = multiprocessing.get_context("spawn")
        self._replies = context.Queue()
        self._requests = [context.Queue() for _ in range(replicas)]
        self._procs = [
            context.Process(
                target=_serve,
                args=(rank, spec, options, self._requests[rank], self._replies),
                name=f"selftune-replica-{rank}",
                daemon=True,
            )
            for rank in range(replicas)
        ]
        for proc, env in zip(self._procs, envs):
            # The child's environment is set before it starts: CUDA_VISIBLE_DEVICES and
            # OMP_NUM_THREADS must be in place before the child imports torch.
            saved = {key: os.environ.get(key) for key in env}
            os.environ.update(env)
            try:
                proc.start()
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        try:
            names = {}
            deadline = time.monotonic() + start_timeout
            while len(names) < replicas:
                rank, kind, payload = self._next(set(range(replicas)) - set(names), deadline)
                if kind == "ready":
                    names[rank] = payload
            self.name = f"{names[0]} x{replicas}" if replicas > 1 else names[0]
        except BaseException:
            self.close()
            raise

    @property
    def replicas(self) -> int:
        return len(self._procs)

    def _next(self, waiting: set[int], deadline: float | None = None):
        """The next message from a child; raises when a child reports an error, or when one of
        the `waiting` children has died without a word."""
        while True:
            try:
                rank, kind, payload = self._replies.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                for rank in waiting:
                    if not self._procs[rank].is_alive():
                        raise GenerationError(
                            f"generation replica {rank} exited with code {self._procs[rank].exitcode} "
                            "before answering (out of memory?)"
                        ) from None
                if deadline is not None and time.monotonic() > deadline:
                    raise GenerationError("generation replicas did not start in time") from None
                continue
            if kind != "error":
                return rank, kind, payload
            if isinstance(payload, SelftuneError):
                raise payload
            raise GenerationError(f"generation replica {rank} failed: {payload}")

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
        stop_when: StopWhen | None = None,
    ) -> list[list[Completion]]:
        shards = shard(len(prompts), self.replicas)
        waiting = set()
        dead = [proc.name for proc in self._procs if not proc.is_alive()]
        if dead:
            raise GenerationError(f"generation replicas are closed or died earlier ({', '.join(dead)})")
        for rank, index in enumerate(shards):
            if not index:
                continue
            try:
                request = pickle.dumps(([prompts[i] for i in index], params, stop_when, index))
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise ConfigError(
                    f"with generation.replicas > 1 the stop_when hook must be picklable (a module-level "
                    f"class, not a closure): {exc}"
                ) from None
            self._requests[rank].put(request)
            waiting.add(rank)
        results: list[list[Completion] | None] = [None] * len(prompts)
        done = dict.fromkeys(waiting, 0)
        try:
            while waiting:
                rank, kind, payload = self._next(waiting)
                if kind == "progress":
                    done[rank] = payload[0]
                    if progress:
                        progress(sum(done.values()), payload[1])
                elif kind == "done":
                    for local, row in enumerate(payload):
                        results[shards[rank][local]] = [
                            dataclasses.replace(c, prompt_index=shards[rank][local]) for c in row
                        ]
                    waiting.discard(rank)
        except BaseException:
            # The other replicas' replies to this request would be read as the next one's answers.
            self.close()
            raise
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop every child and wait for it; a child that does not stop within 30 s is killed."""
        for requests, proc in zip(self._requests, self._procs):
            if proc.is_alive():
                requests.put(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                logger.warning("generation replica %s did not stop; killing it", proc.name)
                proc.kill()
                proc.join()
