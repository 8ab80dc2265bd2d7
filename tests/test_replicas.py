"""Generation replicas: the same answers whatever the number of processes, early rejection across
the process boundary, errors named, and the devices each replica gets."""

import os

import pytest

from selftune.data.early_rejection import EarlyRejection
from selftune.errors import ConfigError, ModelSpecError
from selftune.generation.factory import open_generator
from selftune.generation.replicas import GenerationError, ReplicaGenerator, replica_env, shard
from selftune.generation.types import SamplingParams
from tests.conftest import CHAT_PROMPTS
from tests.test_engine import PROMPTS


class _ExitsTheProcess:
    """A stop_when hook that kills the replica calling it (a crash in the middle of generation)."""

    def __call__(self, prompt_index, sample_index, text):
        os._exit(3)


def test_round_robin_shards_cover_every_prompt_once():
    assert shard(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard(1, 2) == [[0], []]
    assert sorted(i for s in shard(50, 4) for i in s) == list(range(50))


def test_replica_env_splits_cpu_threads_or_assigns_gpus():
    assert [e["SELFTUNE_REPLICA_THREADS"] for e in replica_env(2, 1, [], 16)] == ["8", "8"]
    assert [e["OMP_NUM_THREADS"] for e in replica_env(4, 1, [], 2)] == ["1"] * 4  # never 0
    # Tensor-parallel groups of 2 out of the visible GPUs, in the order CUDA_VISIBLE_DEVICES lists them.
    assert replica_env(2, 2, ["4", "5", "6", "7"], 16) == [
        {"CUDA_VISIBLE_DEVICES": "4,5"},
        {"CUDA_VISIBLE_DEVICES": "6,7"},
    ]
    with pytest.raises(ConfigError, match="needs 6 GPUs; this process sees 4"):
        replica_env(3, 2, ["0", "1", "2", "3"], 16)


@pytest.mark.launch
def test_two_replicas_give_the_answers_of_one_process(tiny_model_dir):
    """Sampling (n=3, with early rejection) and greedy answers through two child processes equal
    the in-process generator's, with prompt indices and progress in the caller's order."""
    prompts = [[m.model_dump() for m in p.messages] for p in PROMPTS] + CHAT_PROMPTS[:3]
    records = PROMPTS + [PROMPTS[3]] * 3  # the title prompt has no early rule: stands in for the rest
    sampled = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=16, seed=11)
    greedy = SamplingParams(max_new_tokens=12)
    spec = str(tiny_model_dir)
    with open_generator(spec, backend="continuous", batch_size=8, dtype="float32") as one:
        expected = [one.generate(prompts, sampled, stop_when=EarlyRejection(records)), one.generate(prompts, greedy)]
    heard = []
    with open_generator(spec, backend="continuous", batch_size=8, dtype="float32", replicas=2) as two:
        assert isinstance(two, ReplicaGenerator) and two.name == "continuous x2"
        got = [
            two.generate(prompts, sampled, stop_when=EarlyRejection(records), progress=lambda d, t: heard.append(d)),
            two.generate(prompts, greedy),
        ]
        with pytest.raises(ConfigError, match="must be picklable"):
            two.generate(prompts, sampled, stop_when=lambda i, s, text: None)
        with pytest.raises(GenerationError, match=r"replica \d exited with code 3"):
            two.generate(prompts, sampled, stop_when=_ExitsTheProcess())
        with pytest.raises(GenerationError, match="closed or died earlier"):
            two.generate(prompts, greedy)
        procs = list(two._procs)
    assert not any(p.is_alive() for p in procs)
    assert got == expected
    assert [c.prompt_index for row in got[0] for c in row] == [i for i in range(len(prompts)) for _ in range(3)]
    assert any(c.finish_reason == "rejected" for row in got[0] for c in row)
    assert heard and heard[-1] == len(prompts) and heard == sorted(heard)


@pytest.mark.launch
def test_a_replica_that_cannot_load_is_named(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    # The child's own error (a ModelSpecError) reaches the caller as itself, not as a traceback.
    with pytest.raises(ModelSpecError, match="could not be loaded: .*not a valid JSON"):
        with open_generator(str(broken), backend="hf", replicas=2):
            pass


def _samples(path):
    import json

    return [
        {k: r[k] for k in ("prompt_id", "sample_index", "completion", "score", "checks", "seed")}
        for r in map(json.loads, path.read_text().splitlines())
    ]


@pytest.mark.launch
def test_sample_stage_and_evaluation_with_two_replicas_match_one_process(tmp_path, finished_run, tiny_model_dir):
    """`generation.replicas: 2` through `run_pipeline` writes the finished one-process run's
    samples; evaluation generates in the replicas and scores exactly as in-process."""
    import selftune
    from selftune.data.records import read_records
    from selftune.evaluation.runner import evaluate_one

    overrides = [f"model.spec={tiny_model_dir}", "pairs.k=1"]
    cfg = selftune.load_config("tiny", overrides=[*overrides, "generation.replicas=2"])
    steps = selftune.run_pipeline(tmp_path / "run", cfg, until_stage="sample", on_event=lambda line: None)
    assert [s.action for s in steps] == ["ran", "ran"]
    sample = "round-1/sample/samples.jsonl"
    ours, theirs = _samples(tmp_path / "run" / sample), _samples(finished_run / sample)
    key = ("prompt_id", "sample_index", "seed")
    assert [[r[k] for k in key] for r in ours] == [[r[k] for k in key] for r in theirs]
    # Each sample draws from its own seeded generator, so the replicas' split of the prompts
    # changes no draw. The logits may still differ in the last bits, because a batch of other rows
    # multiplies in another blocking: on the tiny random model's flat distributions a near tie then
    # flips one token and the text goes its own way (on this AVX-512 CPU one of 48 samples, after
    # 20 equal words).
    # A seeding fault would change the samples from their first token.
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same >= 0.9 * len(theirs), f"{same} of {len(theirs)} samples equal"
    for a, b in zip(ours, theirs):
        if a != b:
            assert os.path.commonprefix([a["completion"], b["completion"]]).count(" ") >= 3, (a, b)

    prompts = [p for p in read_records(finished_run / "round-1/prompts/prompts.jsonl", "prompts") if p.split == "eval"]
    one = selftune.load_config("tiny", overrides=overrides)
    heard = []
    replicated, answers = evaluate_one(
        "base", str(tiny_model_dir), prompts[:6], [], cfg, progress=lambda *a: heard.append(a)
    )
    alone, expected = evaluate_one("base", str(tiny_model_dir), prompts[:6], [], one)
    assert answers == expected
    assert replicated["metrics"]["instruction_following"] == alone["metrics"]["instruction_following"]
    assert replicated["metrics"]["peak_memory_gib"] is None  # no model loaded in this process
    assert heard[-1] == ("base: eval", 6, 6)
