import json
import math
import random

import pytest
import torch

from selftune.config.loading import load_config
from selftune.data.constraints.registry import check
from selftune.data.pairs import CORRUPTIONS, Chosen, build_pairs, contrasts_for, similarity
from selftune.data.records import PromptRecord, SampleRecord, read_records
from selftune.errors import RecordError
from selftune.run.folder import Run
from selftune.run.manifest import read_manifest
from selftune.scoring.constraint import ConstraintScorer

PROMPTS = [
    PromptRecord(
        id="p1",
        messages=[{"role": "user", "content": "Write about the sea in lowercase, with a title."}],
        constraints=[{"type": "lowercase"}, {"type": "title"}],
    ),
    PromptRecord(
        id="p2",
        messages=[{"role": "user", "content": "List three fruits as bullets, no commas."}],
        constraints=[{"type": "bullet_count", "kwargs": {"n": 3}}, {"type": "no_commas"}],
    ),
    PromptRecord(
        id="p3",
        messages=[{"role": "user", "content": "End with That is all."}],
        constraints=[
            {"type": "end_phrase", "kwargs": {"phrase": "That is all."}},
            {"type": "word_count", "kwargs": {"relation": "at least", "n": 8}},
        ],
    ),
]
GOOD = {
    "p1": "<<the sea>>\nthe sea is wide and calm today and the waves roll in slowly under a grey sky.",
    "p2": "Here are three fruits:\n* apple for breakfast\n* banana for lunch\n* cherry for dessert",
    "p3": "The garden was quiet in the evening and the birds sang softly. That is all.",
}
CHOSEN = {pid: Chosen(text, "policy") for pid, text in GOOD.items()}


# change-number fails a reference answer, not a constraint: tests/test_verifiers.py scores it with one.
@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - {"change-number"}))
def test_every_corruption_scores_lower_than_the_chosen(name):
    scorer = ConstraintScorer()
    context = {"passing_answers": GOOD}
    for prompt in PROMPTS:
        good = GOOD[prompt.id]
        [good_score] = scorer.score(prompt, [good])
        assert good_score.passed
        bad = CORRUPTIONS[name](good, prompt, random.Random(0), context)
        assert bad is not None and bad != good
        [bad_score] = scorer.score(prompt, [bad])
        assert bad_score.score < good_score.score, (name, prompt.id, bad)


def test_repeat_corrupts_a_one_word_answer():
    for seed in range(5):
        bad = CORRUPTIONS["repeat"]("Yes.", PROMPTS[0], random.Random(seed), {})
        assert bad.split().count("Yes.") >= 8


def test_violate_constraint_names_a_broken_constraint():
    context = {}
    prompt = PROMPTS[0]
    bad = CORRUPTIONS["violate-constraint"](GOOD["p1"], prompt, random.Random(1), context)
    violated = context["violated"]
    kwargs = next(c.kwargs for c in prompt.constraints if c.type == violated)
    assert check(violated, GOOD["p1"], kwargs) and not check(violated, bad, kwargs)


def _sample(pid, text, score, index):
    return SampleRecord(prompt_id=pid, model="m", completion=text, score=score, sample_index=index)


def test_pairs_mix_sources_count_them_and_drop_near_identical():
    policy = {"p1": [_sample("p1", "The Sea Is Loud.", 0.0, 0)], "p2": [_sample("p2", GOOD["p2"] + "!", 0.5, 1)]}
    base = {"p3": [_sample("p3", "No.", 0.0, 0)]}
    weights = {"policy": 1.0, "base": 1.0, "corrupt:truncate": 1.0, "corrupt:repeat": 1.0}
    pairs, counts = build_pairs(
        PROMPTS,
        chosen=CHOSEN,
        policy_failures=policy,
        base_failures=base,
        scorer=ConstraintScorer(),
        weights=weights,
        pairs_per_prompt=4,
        max_similarity=0.95,
        seed=0,
    )
    by_source = {}
    for pair in pairs:
        by_source[pair.negative_source] = by_source.get(pair.negative_source, 0) + 1
        assert pair.chosen_score > pair.rejected_score
        assert similarity(pair.chosen[0].content, pair.rejected[0].content) < 0.95
    assert counts["by_source"] == by_source and counts["pairs"] == len(pairs)
    assert by_source.get("policy") == 1 and by_source.get("base") == 1  # p2's policy sample was near-identical
    assert counts["dropped"]["near_identical"] == 1
    assert len({p.id for p in pairs}) == len(pairs)
    assert {p.chosen_source for p in pairs} == {"policy"} and counts["by_chosen_source"] == {"policy": len(pairs)}


def test_minimal_contrast_pairs_a_repair_over_its_original():
    failing = {
        "p1": [
            _sample("p1", "The Sea Is Wide And Calm Today. The Waves Roll In Slowly.", 0.5, 0),
            _sample("p1", "The Sea. It Never Sleeps, And The Gulls Cry All Day. Boats", 0.3, 1),
        ]
    }
    contrasts = {"p1": contrasts_for(PROMPTS[0], failing["p1"], limit=2, seed=0)}
    assert len(contrasts["p1"]) == 2
    pairs, counts = build_pairs(
        PROMPTS[:1],
        chosen={},
        policy_failures={},
        base_failures={},
        scorer=ConstraintScorer(),
        weights={"original": 1.0},
        pairs_per_prompt=4,
        max_similarity=0.95,
        seed=0,
        contrasts=contrasts,
    )
    assert counts["by_source"] == {"original": 2} and len(pairs) == 2
    originals = {s.completion for s in failing["p1"]}
    for pair in pairs:
        assert pair.rejected[0].content in originals
        assert pair.chosen_source.startswith("repair:") and "lowercase" in pair.chosen_source
        assert ConstraintScorer().score(PROMPTS[0], [pair.chosen[0].content])[0].passed
        # Minimal: the repair keeps the original's words (here: lowercased, a title added, cut to whole sentences).
        assert pair.chosen[0].content.split("\n")[-1] in pair.rejected[0].content.lower()


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match="unknown negative sources"):
        build_pairs(
            PROMPTS,
            chosen=CHOSEN,
            policy_failures={},
            base_failures={},
            scorer=ConstraintScorer(),
            weights={"corrupt:shuffle": 1.0},
            pairs_per_prompt=1,
            max_similarity=0.9,
            seed=0,
        )


def test_bad_pair_files_name_file_line_field(tmp_path):
    prompt, answer = [{"role": "user", "content": "q"}], [{"role": "assistant", "content": "a"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"id": "a", "prompt": prompt, "chosen": answer, "rejected": answer, "negative_source": "policy"})
        + "\n"
        + json.dumps({"id": "b", "prompt": prompt, "chosen": answer, "negative_source": "base"})
        + "\n"
    )
    with pytest.raises(RecordError) as caught:
        read_records(path, "pairs")
    assert caught.value.problems == [f"{path}:1: rejected: identical to chosen", f"{path}:2: rejected: missing"]


def _upstream_run(tmp_path, sft_ids):
    """A run whose prompts, sample and sft-data stages hold PROMPTS (p3 is the eval prompt)."""
    from selftune.run.files import write_jsonl

    run = Run(tmp_path / "run")
    prompts = [p.model_copy(update={"split": "eval" if p.id == "p3" else "train"}) for p in PROMPTS]
    for stage, name, rows in (
        ("prompts", "prompts", prompts),
        ("sample", "samples", [_sample("p1", "No.", 0.0, 0)]),
        (
            "sft-data",
            "sft",
            [
                {
                    "id": i,
                    "prompt": [{"role": "user", "content": "q"}],
                    "completion": [{"role": "assistant", "content": GOOD[i]}],
                }
                for i in sft_ids
            ],
        ),
    ):
        with run.stage(stage, config={}) as context:
            write_jsonl(context.dir / f"{name}.jsonl", rows)
            context.add_output(name, context.dir / f"{name}.jsonl")
    return run


def test_pairs_stage_without_held_out_pairs_warns_and_without_train_pairs_fails(tmp_path, caplog):
    from selftune.stages.pairs import NoPairsError, pairs_stage
    from tests.conftest import MockGenerator

    cfg = load_config("tiny", overrides=["sample.scorer.pass_threshold=1.0"])
    failing = MockGenerator(["No."])  # the SFT model passes nothing, the eval prompt p3 included
    run = _upstream_run(tmp_path, ["p1", "p2"])
    with caplog.at_level("WARNING", logger="selftune.pairs"):
        pairs_stage(run, cfg, policy="mock", generator=failing)
    manifest = read_manifest(run.stage_dir("pairs"))
    assert manifest.status == "complete" and "eval_pairs" not in manifest.outputs
    assert manifest.metrics["train"]["pairs"] > 0 and manifest.metrics["eval"]["pairs"] == 0
    assert "no held-out pair from 1 eval prompts" in caplog.text

    run = _upstream_run(tmp_path / "second", ["p3"])  # SFT data holds no train prompt
    with pytest.raises(NoPairsError, match="no training pair from 2 train prompts"):
        pairs_stage(run, cfg, policy="mock", generator=failing)
    assert read_manifest(run.stage_dir("pairs")).status == "failed"


# ---- DPO on the tiny model -----------------------------------------------------------------


def write_pairs(path, count=16):
    rng = random.Random(0)
    with open(path, "w") as handle:
        for i in range(count):
            good = f"yes this answer {i} is lowercase and calm"
            bad = " ".join(rng.choice(["NO", "WRONG", "Loud", "Bad"]) for _ in range(6))
            handle.write(
                json.dumps(
                    {
                        "id": f"x{i}",
                        "prompt": [{"role": "user", "content": f"Question {i}?"}],
                        "chosen": [{"role": "assistant", "content": good}],
                        "rejected": [{"role": "assistant", "content": bad}],
                        "negative_source": "corrupt:repeat",
                        "chosen_score": 1.0,
                        "rejected_score": 0.0,
                    }
                )
                + "\n"
            )
    return path


class Snapshot:
    pass


def test_dpo_trains_lora_only_starts_at_log2_and_learns_the_preference(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback

    from selftune.stages.dpo import dpo_stage

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.after = {n: p.detach().clone() for n, p in model.named_parameters()}

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    eval_pairs = write_pairs(tmp_path / "eval.jsonl", count=6)
    cfg = load_config(
        "tiny",
        overrides=[
            "dpo.epochs=3",
            "dpo.learning_rate=5e-3",
            "dpo.lora.dropout=0.0",
            "dpo.beta=0.5",
            "dpo.length_check_prompts=2",
        ],
    )
    capture = Capture()
    run = Run(tmp_path / "run")
    heard = []  # the reference pass's progress: (label, done, total)
    merged = dpo_stage(
        run,
        cfg,
        pairs_path=pairs,
        eval_pairs_path=eval_pairs,
        sft_model=str(tiny_model_dir),
        progress=capture,
        phase_progress=lambda *call: heard.append(call),
    )
    assert heard[-1] == ("reference log-probs, held-out", 6, 6) and ("reference log-probs", 16, 16) in heard
    for name, before in capture.before.items():
        assert (not torch.equal(before, capture.after[name])) == ("lora_" in name), name
    history = json.loads((run.stage_dir("dpo") / "log_history.json").read_text())
    train_logs = [h for h in history if "loss" in h and "eval_loss" not in h]
    assert train_logs[0]["step"] == 1 and train_logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert train_logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    metrics = read_manifest(run.stage_dir("dpo")).metrics
    assert metrics["eval_after"]["eval_rewards/accuracies"] > 0.5
    assert train_logs[-1]["rewards/accuracies"] > 0.5
    assert metrics["eval_after"]["eval_rewards/margins"] > metrics["eval_before"]["eval_rewards/margins"]
    assert (merged / "model.safetensors").is_file()
    assert "length_sft" in metrics and "length_dpo" in metrics
    by_source = metrics["held_out_by_source"]
    assert by_source["all"]["pairs"] == 6 and by_source["corrupt:repeat"]["pairs"] == 6
    assert by_source["all"]["accuracy"] == pytest.approx(metrics["eval_after"]["eval_rewards/accuracies"], abs=1e-3)
    assert metrics["share_prompts"] is True  # the tiny Llama passes the sharing check


def test_dpo_against_the_base_loads_it_alone_first_and_starts_with_its_margins(
    tmp_path, tiny_model_dir, smollm_tokenizer_dir, monkeypatch
):
    """dpo.reference: base measures the policy (the SFT model) against the run's base model: it is
    loaded on its own, unloaded, and only then the policy loads; the margins at step 0 are those
    between the two models, not 0, and the held-out ones are measured rather than assumed."""
    import selftune.train.dpo as dpo_training
    from selftune.stages.dpo import dpo_stage
    from tests.conftest import build_tiny_model

    sft_model = build_tiny_model(tmp_path / "sft-model", smollm_tokenizer_dir, seed=1)
    events = []
    loading, unloading, lora = dpo_training.training_weights, dpo_training.unload, dpo_training.lora_model
    monkeypatch.setattr(
        dpo_training, "training_weights", lambda spec, *a: events.append(("load", spec)) or loading(spec, *a)
    )
    monkeypatch.setattr(dpo_training, "unload", lambda model: events.append(("unload",)) or unloading(model))
    monkeypatch.setattr(dpo_training, "lora_model", lambda spec, *a: events.append(("policy", spec)) or lora(spec, *a))

    def train(reference, base, folder):
        cfg = load_config(
            "tiny", overrides=[f"dpo.reference={reference}", f"model.spec={base}", "dpo.length_check_prompts=0"]
        )
        run = Run(tmp_path / folder)
        dpo_stage(
            run,
            cfg,
            pairs_path=write_pairs(tmp_path / "pairs.jsonl"),
            eval_pairs_path=write_pairs(tmp_path / "eval.jsonl", count=6),
            sft_model=str(sft_model),
        )
        history = json.loads((run.stage_dir("dpo") / "log_history.json").read_text())
        first = next(h for h in history if "loss" in h and "eval_loss" not in h)
        return first, read_manifest(run.stage_dir("dpo"))

    first, manifest = train("base", tiny_model_dir, "against-base")
    assert events[:3] == [("load", str(tiny_model_dir)), ("unload",), ("policy", str(sft_model))]
    assert manifest.inputs["reference_model"].path == str(tiny_model_dir)
    assert abs(first["rewards/margins"]) > 1e-3 and first["loss"] != pytest.approx(math.log(2), abs=1e-4)
    assert abs(manifest.metrics["eval_before"]["eval_rewards/margins"]) > 1e-3
    # The same run with the SFT model itself as "base": its own weights, so margins start at 0.
    events.clear()
    first, _ = train("base", sft_model, "against-itself")
    assert events[0] == ("load", str(sft_model))
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)


def test_dpo_reference_start_is_the_model_the_rounds_sft_trained_from(tmp_path):
    from selftune.errors import LineageError
    from selftune.run.manifest import MANIFEST
    from selftune.stages.dpo import reference_model

    run = Run(tmp_path / "run")
    cfg = load_config("tiny", overrides=["dpo.reference=start"])

    def sft_manifest(round_number, inputs):
        folder = run.stage_dir("sft", round_number)
        folder.mkdir(parents=True)
        manifest = {"stage": "sft", "round": round_number, "status": "complete", "config_hash": "0", "inputs": inputs}
        manifest |= {"started_at": "", "finished_at": "", "seconds": 0}
        (folder / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(LineageError, match="round-1/sft trained from, and that stage has not completed"):
        reference_model(run, cfg, 1)
    sft_manifest(1, {"sft": {"path": "round-1/sft-data/sft.jsonl", "sha256": "0"}})
    sft_manifest(2, {"base": {"path": "round-1/dpo/merged", "sha256": "0"}})
    assert reference_model(run, cfg, 1) == cfg.model.spec  # round 1 starts from the base
    assert reference_model(run, cfg, 2) == str(run.root / "round-1" / "dpo" / "merged")
    assert reference_model(run, load_config("tiny", overrides=["dpo.reference=base"]), 2) == cfg.model.spec
    assert reference_model(run, load_config("tiny"), 2) is None  # the SFT model itself


def test_a_missing_dpo_reference_is_named_before_anything_loads(tmp_path, tiny_model_dir, monkeypatch):
    import selftune.train.dpo as dpo_training
    from selftune.errors import ModelSpecError
    from selftune.stages.dpo import dpo_stage

    monkeypatch.setattr(dpo_training, "lora_model", lambda *a: pytest.fail("a model loaded"))
    cfg = load_config("tiny", overrides=["dpo.reference=base", f"model.spec={tmp_path / 'no-such-model'}"])
    run = Run(tmp_path / "run")
    with pytest.raises(ModelSpecError, match="no-such-model"):
        dpo_stage(run, cfg, pairs_path=write_pairs(tmp_path / "pairs.jsonl"), sft_model=str(tiny_model_dir))
    assert read_manifest(run.stage_dir("dpo")) is None


@pytest.mark.parametrize("reference", ["start", "base"])
def test_another_dpo_reference_needs_precomputed_log_probs(reference):
    from selftune.errors import ConfigError

    with pytest.raises(ConfigError, match=f"reference '{reference}' needs precompute_ref_log_probs: true"):
        load_config("tiny", overrides=[f"dpo.reference={reference}", "dpo.precompute_ref_log_probs=false"])


def test_dpo_length_check_after_bf16_training_generates_in_the_models_own_dtype(tmp_path, tiny_model_dir, caplog):
    """Training under bf16 autocast wraps model.forward; the length check after it must not see bf16
    activations against the fp32 engine cache (the engine then fell back to the HF backend)."""
    from selftune.stages.dpo import dpo_stage

    cfg = load_config("tiny", overrides=["dpo.bf16=true", "dpo.length_check_prompts=2", "generation.backend=auto"])
    run = Run(tmp_path / "run")
    with caplog.at_level("WARNING", logger="selftune.generation"):
        dpo_stage(
            run,
            cfg,
            pairs_path=write_pairs(tmp_path / "pairs.jsonl"),
            eval_pairs_path=write_pairs(tmp_path / "eval.jsonl", count=6),
            sft_model=str(tiny_model_dir),
        )
    metrics = read_manifest(run.stage_dir("dpo")).metrics
    assert metrics["bf16"] is True and "length_dpo" in metrics
    assert not [r for r in caplog.records if "continuous engine off" in r.getMessage()]


def test_dpo_runs_whole_sequences_when_prompt_sharing_would_change_log_probs(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    import selftune.train.logprobs
    from selftune.stages.dpo import dpo_stage

    monkeypatch.setattr(selftune.train.logprobs, "prompt_sharing_mismatch", lambda model, rows, collator: 0.3)
    shared_calls = []
    real = selftune.train.logprobs._shared_prompt_logps
    monkeypatch.setattr(
        selftune.train.logprobs, "_shared_prompt_logps", lambda *a, **k: shared_calls.append(1) or real(*a, **k)
    )
    cfg = load_config("tiny", overrides=["dpo.epochs=1", "dpo.length_check_prompts=0"])
    run = Run(tmp_path / "run")
    dpo_stage(
        run, cfg, pairs_path=write_pairs(tmp_path / "pairs.jsonl"), eval_pairs_path=None, sft_model=str(tiny_model_dir)
    )
    assert read_manifest(run.stage_dir("dpo")).metrics["share_prompts"] is False
    assert "prompt sharing changes this model's log-probs" in caplog.text
    assert not shared_calls


def test_dpo_batches_keep_a_prompts_pairs_together(tmp_path, tiny_model_dir, monkeypatch):
    from selftune.stages.dpo import dpo_stage
    from selftune.train.logprobs import PairCollator

    seen = []  # prompt group of every training row, in the order the batches were built
    collate = PairCollator.__call__
    monkeypatch.setattr(
        PairCollator,
        "__call__",
        lambda self, rows: seen.extend(r["prompt_group"] for r in rows) or collate(self, rows),
    )
    cfg = load_config(
        "tiny",
        overrides=[
            "dpo.epochs=2",
            "dpo.length_check_prompts=0",
            "dpo.per_device_batch_size=2",
            "dpo.precompute_ref_log_probs=false",
            "dpo.share_prompts=false",
        ],
    )
    dpo_stage(
        Run(tmp_path / "run"),
        cfg,
        pairs_path=write_pairs_varied(tmp_path / "pairs.jsonl"),
        eval_pairs_path=None,
        sft_model=str(tiny_model_dir),
    )
    epochs = [seen[:7], seen[7:]]
    assert len(seen) == 14 and epochs[0] != epochs[1]  # 7 pairs (5 prompts) per epoch, reshuffled
    for order in epochs:
        runs = [order[0]] + [b for a, b in zip(order, order[1:]) if a != b]
        assert sorted(runs) == list(range(5))  # each prompt's pairs in one contiguous run


def test_dpo_resumed_from_a_checkpoint_replays_the_same_batches_and_losses(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback

    from selftune.stages.dpo import dpo_stage

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated interruption")

    def losses(run):
        history = json.loads((run.stage_dir("dpo") / "log_history.json").read_text())
        return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}

    pairs = write_pairs_varied(tmp_path / "pairs.jsonl")
    cfg = load_config("tiny", overrides=["dpo.epochs=2", "dpo.per_device_batch_size=2", "dpo.length_check_prompts=0"])
    straight, interrupted = Run(tmp_path / "straight"), Run(tmp_path / "interrupted")
    dpo_stage(straight, cfg, pairs_path=pairs, eval_pairs_path=None, sft_model=str(tiny_model_dir))
    with pytest.raises(KeyboardInterrupt):
        dpo_stage(
            interrupted, cfg, pairs_path=pairs, eval_pairs_path=None, sft_model=str(tiny_model_dir), progress=StopAt()
        )
    dpo_stage(interrupted, cfg, pairs_path=pairs, eval_pairs_path=None, sft_model=str(tiny_model_dir))
    assert read_manifest(interrupted.stage_dir("dpo")).metrics["resumed"] is True
    expected, resumed = losses(straight), losses(interrupted)
    assert set(resumed) == set(expected) == set(range(1, 9))  # 2 epochs of 4 batches; steps 1-2 from checkpoint-2
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], rel=1e-5), step


def full_pass_logps(model, batch):
    """Answer log-probs from one plain forward over the padded batch: what every saving must equal."""
    from selftune.train.masking import IGNORE_INDEX

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    full = -torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return (full * (targets != IGNORE_INDEX)).sum(-1), (targets != IGNORE_INDEX).sum(-1)


def varied_batch(tmp_path, tiny_model_dir):
    from selftune.models import load_model, load_tokenizer
    from selftune.train.logprobs import PairCollator, tokenize_pairs

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype="float32")
    pairs = read_records(write_pairs_varied(tmp_path / "pairs.jsonl"), "pairs")
    rows, _ = tokenize_pairs(tokenizer, pairs, max_length=256, response_separator=None, max_drop_share=0.0, source="t")
    return model, rows, PairCollator(tokenizer.pad_token_id)(rows)


@pytest.mark.parametrize("max_padding", [0.0, 0.15, 10.0])
@pytest.mark.parametrize("share_prompts", [False, True])
def test_sequence_logps_savings_equal_the_full_pass(tmp_path, tiny_model_dir, max_padding, share_prompts):
    from selftune.train.logprobs import _length_chunks, sequence_logps

    model, rows, batch = varied_batch(tmp_path, tiny_model_dir)
    expected, expected_counts = full_pass_logps(model, batch)
    expected.sum().backward()
    expected_grad = model.get_input_embeddings().weight.grad.clone()
    model.zero_grad()

    got, counts = sequence_logps(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        max_padding=max_padding,
        share_prompts=share_prompts,
    )
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert counts.tolist() == expected_counts.tolist()
    got.sum().backward()  # the same gradients, through every chunk, duplicate row and shared prompt
    assert torch.allclose(
        model.get_input_embeddings().weight.grad, expected_grad, rtol=1e-4, atol=1e-5 * float(expected_grad.abs().max())
    )
    lengths = batch["attention_mask"].sum(-1).tolist()
    chunks = _length_chunks(lengths, max_padding)
    assert sorted(k for c in chunks for k in c) == list(range(len(lengths)))
    assert (len(chunks) == 1) == (max_padding == 10.0)
    for chunk in chunks:
        width = max(lengths[k] for k in chunk)
        assert len(chunk) * width <= (1 + max_padding) * sum(lengths[k] for k in chunk) or len(chunk) == 1


def test_prompt_sharing_runs_each_prompt_and_duplicate_answer_once(tmp_path, tiny_model_dir):
    from selftune.train.logprobs import sequence_logps
    from selftune.train.masking import IGNORE_INDEX

    model, _, batch = varied_batch(tmp_path, tiny_model_dir)
    fed = []  # real (unmasked) positions fed to each forward call
    model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(
            int(kwargs["attention_mask"][:, -kwargs["input_ids"].shape[1] :].sum())
        ),
        with_kwargs=True,
    )
    sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], share_prompts=True)
    rows = {
        tuple(ids[mask == 1].tolist()): labels[mask == 1].tolist()
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])
    }
    prefix = {ids: [label != IGNORE_INDEX for label in labels].index(True) - 1 for ids, labels in rows.items()}
    prompts = {ids[: prefix[ids]] for ids in rows}
    assert len(prompts) < len(rows) < len(batch["input_ids"])  # the data repeats prompts and whole rows
    assert sum(fed) == sum(map(len, prompts)) + sum(len(ids) - prefix[ids] for ids in rows)


def test_prompt_sharing_is_off_under_gradient_checkpointing_with_gradients(tmp_path, tiny_model_dir):
    """Checkpointed layers drop the KV cache while gradients are on; the answers must still see their prompts."""
    from selftune.train.logprobs import sequence_logps

    model, _, batch = varied_batch(tmp_path, tiny_model_dir)
    expected, _ = full_pass_logps(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    got, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], share_prompts=True)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)


def test_prompt_grouped_sampler_keeps_a_prompts_pairs_together_and_reshuffles_per_epoch():
    from selftune.train.dpo import PromptGroupedSampler

    groups = [0, 1, 0, 2, 3, 1, 0, 4, 5, 5, 6, 7]
    sampler = PromptGroupedSampler(groups, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(groups))) and len(sampler) == len(groups)
        runs = [groups[order[0]]] + [groups[b] for a, b in zip(order, order[1:]) if groups[a] != groups[b]]
        assert len(runs) == len(set(groups))  # each prompt's pairs form one contiguous run
        orders.append(order)
    assert orders[0] != orders[1] and orders[0] == orders[2]


def write_pairs_varied(path):
    """Pairs whose prompts, chosen and rejected answers differ in length; two prompts have two
    pairs each, with the same chosen answer (as the pairs stage writes them)."""
    with open(path, "w") as handle:
        for i in range(7):
            p = min(i, 4)  # pairs 5 and 6 reuse the prompts (and chosen answers) of pairs 4 and 4
            p = {5: 2, 6: 4}.get(i, p)
            handle.write(
                json.dumps(
                    {
                        "id": f"v{i}",
                        "prompt": [{"role": "user", "content": "Tell me " + "more " * (3 * p) + "?"}],
                        "chosen": [{"role": "assistant", "content": "a fine answer " * (1 + 4 * p)}],
                        "rejected": [{"role": "assistant", "content": "no " * (2 + (7 * i) % 11)}],
                        "negative_source": "policy",
                    }
                )
                + "\n"
            )
    return path


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "rpo"])
def test_loss_types_at_equal_policy_and_reference(loss_type):
    from selftune.train.dpo import dpo_loss

    policy = torch.tensor([-5.0, -7.0, -9.0, -8.0])  # chosen x2, rejected x2
    counts = torch.tensor([5, 7, 9, 8])
    losses, metrics = dpo_loss(policy, policy.clone(), counts, beta=0.1, loss_type=loss_type, rpo_alpha=1.0)
    expected = {"sigmoid": math.log(2), "hinge": 1.0, "ipo": (1 / 0.2) ** 2}.get(loss_type)
    if loss_type == "rpo":
        assert torch.allclose(losses, math.log(2) + torch.tensor([1.0, 1.0]))
    else:
        assert torch.allclose(losses, torch.full((2,), expected))
    assert torch.all(metrics["rewards/margins"] == 0)


def test_collator_carries_pair_index_only_when_every_row_has_one():
    from selftune.train.logprobs import PairCollator

    row = {
        "chosen_input_ids": [1, 2, 3],
        "chosen_labels": [-100, 2, 3],
        "rejected_input_ids": [1, 4],
        "rejected_labels": [-100, 4],
    }
    collate = PairCollator(pad_id=0)
    held_out = [{**row, "pair_index": 7}, {**row, "pair_index": 9}]
    assert collate(held_out)["pair_index"].tolist() == [7, 9]
    mixed = [{**row, "pair_index": 7}, dict(row)]  # reference log-probs run over train and held-out rows together
    batch = collate(mixed)
    assert "pair_index" not in batch and batch["input_ids"].shape == (4, 3)


def test_pairs_without_sampling_the_sft_model_use_base_failures_and_sft_repairs(tmp_path):
    """pairs.k=0: no model is loaded; the SFT data's repairs pair over the base answers they mend."""
    from selftune.run.files import write_jsonl
    from selftune.stages.pairs import pairs_stage

    run = Run(tmp_path / "run")
    original = "The Sea Is Wide And Calm Today. The Waves Roll In."
    repaired = "<<the sea>>\n\nthe sea is wide and calm today. the waves roll in."
    prompts = [p.model_copy(update={"split": "train"}) for p in PROMPTS]
    for stage, name, rows in (
        ("prompts", "prompts", prompts),
        ("sample", "samples", [_sample("p1", original, 0.5, 0), _sample("p2", "No.", 0.25, 0)]),
        (
            "sft-data",
            "sft",
            [
                {
                    "id": "p1",
                    "prompt": [{"role": "user", "content": "q"}],
                    "chosen_source": "repair:lowercase+title",
                    "original": original,
                    "completion": [{"role": "assistant", "content": repaired}],
                },
                {
                    "id": "p2",
                    "prompt": [{"role": "user", "content": "q"}],
                    "chosen_source": "sample",
                    "completion": [{"role": "assistant", "content": GOOD["p2"]}],
                },
            ],
        ),
    ):
        with run.stage(stage, config={}) as context:
            write_jsonl(context.dir / f"{name}.jsonl", rows)
            context.add_output(name, context.dir / f"{name}.jsonl")
    cfg = load_config(
        "tiny",
        overrides=[
            "pairs.k=0",
            "pairs.pairs_per_prompt=1",
            "sample.scorer.pass_threshold=1.0",
            "pairs.sources={original: 1.0, policy: 1.0}",
        ],
    )
    pairs_stage(run, cfg, policy="no-such-model")  # would fail if it tried to load a model
    pairs = {p.id.rsplit("-", 1)[0]: p for p in read_records(run.output_of("pairs", "pairs"), "pairs")}
    assert pairs["p1"].negative_source in ("original", "policy") and pairs["p1"].rejected[0].content == original
    assert pairs["p1"].chosen[0].content == repaired and pairs["p1"].chosen_source == "repair:lowercase+title"
    assert pairs["p2"].negative_source == "policy" and pairs["p2"].rejected[0].content == "No."
    manifest = read_manifest(run.stage_dir("pairs"))
    assert "policy_samples" not in manifest.outputs and manifest.metrics["eval"]["pairs"] == 0


def _prepared_pairs_run(tmp_path):
    """A run whose prompts, sample and sft-data stages are written by hand (no model)."""
    from selftune.run.files import write_jsonl

    run = Run(tmp_path / "run")
    prompts = [p.model_copy(update={"split": "train"}) for p in PROMPTS]
    for stage, name, rows in (
        ("prompts", "prompts", prompts),
        ("sample", "samples", [_sample("p1", "The Sea Is Loud.", 0.2, 0), _sample("p2", "No.", 0.25, 0)]),
        (
            "sft-data",
            "sft",
            [
                {
                    "id": pid,
                    "prompt": [{"role": "user", "content": "q"}],
                    "chosen_source": "sample",
                    "completion": [{"role": "assistant", "content": GOOD[pid]}],
                }
                for pid in ("p1", "p2")
            ],
        ),
    ):
        with run.stage(stage, config={}) as context:
            write_jsonl(context.dir / f"{name}.jsonl", rows)
            context.add_output(name, context.dir / f"{name}.jsonl")
    return run


def test_pairs_with_a_self_judging_scorer_judge_with_the_policy(tmp_path):
    """Bug: with sample.scorer.kind=judge and no judge_model, pairs built its pairs with a judge that
    had no generator and died on `None.generate`; the policy (the SFT model) must judge."""
    from selftune.generation.types import Completion
    from selftune.stages.pairs import pairs_stage

    run = _prepared_pairs_run(tmp_path)
    cfg = load_config(
        "tiny",
        overrides=[
            "pairs.k=1",
            "pairs.pairs_per_prompt=1",
            "sample.scorer.kind=judge",
            "pairs.sources={policy: 1.0, corrupt:truncate: 1.0}",
            "pairs.eval_prompts=0",
        ],
    )

    class Policy:
        """Answers badly; as a judge, rates the known good answers 9/10 and anything else 2/10."""

        calls = []

        def generate(self, prompts, params, progress=None, stop_when=None):
            self.calls.append(prompts)

            def text(messages):
                content = messages[-1]["content"]
                if "Rate how well" not in content:
                    return "Bad."
                return "Score: 9/10" if any(good in content for good in GOOD.values()) else "Score: 2/10"

            return [
                [Completion(i, s, text(p), "stop", 5, 3, s) for s in range(params.n)] for i, p in enumerate(prompts)
            ]

    policy = Policy()
    pairs_stage(run, cfg, policy="sft-model", generator=policy)
    pairs = read_records(run.output_of("pairs", "pairs"), "pairs")
    assert {p.id.rsplit("-", 1)[0] for p in pairs} == {"p1", "p2"}
    assert all(p.chosen[0].content == GOOD[p.id.rsplit("-", 1)[0]] for p in pairs)
    judged = [prompts for prompts in policy.calls if "Rate how well" in prompts[0][-1]["content"]]
    assert judged, "the policy was never asked to judge"


def test_a_self_judging_scorer_without_a_model_is_a_named_error():
    from selftune.errors import ConfigError
    from selftune.scoring.registry import make_scorer

    cfg = load_config("tiny", overrides=["sample.scorer.kind=judge"])
    with pytest.raises(ConfigError, match="judge_model"):
        with make_scorer(cfg, None):
            pass
