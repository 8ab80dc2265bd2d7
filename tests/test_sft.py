import json

import pytest
import torch
from transformers import TrainerCallback

from selftune.config.loading import load_config
from selftune.errors import TooManyDroppedError
from selftune.run.folder import Run
from selftune.run.manifest import read_manifest
from selftune.stages.sft import sft_stage
from selftune.train.toolkit import NonFiniteLossError

ANSWERS = [
    "all lowercase words here",
    "* one\n* two",
    "<<Title>>\nShort text.",
    "Sure thing. Done.",
    "SECTION 1\nA\nSECTION 2\nB",
    "yes, this is fine",
    "no commas at all",
    "The end. That is all.",
]


def write_sft(path, count=16):
    with open(path, "w") as handle:
        for i in range(count):
            handle.write(
                json.dumps(
                    {
                        "id": f"e{i}",
                        "prompt": [{"role": "user", "content": f"Task number {i}: write something short."}],
                        "completion": [{"role": "assistant", "content": ANSWERS[i % len(ANSWERS)] + f" ({i})"}],
                    }
                )
                + "\n"
            )
    return path


def tiny_cfg(model_dir, *extra):
    return load_config("tiny", overrides=[f"model.spec={model_dir}", "sft.epochs=2", "sft.lora.dropout=0.0", *extra])


class Snapshot(TrainerCallback):
    """Copies every parameter when training begins and ends."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_training_changes_every_lora_parameter_and_no_base_parameter(tmp_path, tiny_model_dir):
    data = write_sft(tmp_path / "sft.jsonl")
    snapshot = Snapshot()
    run = Run(tmp_path / "run")
    merged = sft_stage(run, tiny_cfg(tiny_model_dir), data_path=data, progress=snapshot)
    lora = [n for n in snapshot.before if "lora_" in n]
    assert len(lora) == 2 * 7 * 2  # A and B for q,k,v,o,gate,up,down in both layers
    for name, before in snapshot.before.items():
        changed = not torch.equal(before, snapshot.after[name])
        assert changed == ("lora_" in name), name
    metrics = read_manifest(run.stage_dir("sft")).metrics
    assert metrics["steps"] == 8 and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["tokens_per_second"] > 0 and 0 < metrics["response_token_share"] < 1
    out = run.stage_dir("sft")
    # The held-out loss after training is the Trainer's own end-of-training pass, not a second one,
    # and its time is kept out of the training throughput.
    history = json.loads((out / "log_history.json").read_text())
    final = [entry for entry in history if "eval_loss" in entry and entry["step"] == 8]
    assert len(final) == 1 and final[0]["eval_loss"] == metrics["eval_loss_after"]
    assert 0 < metrics["eval_seconds_in_training"] < metrics["train_seconds"] + metrics["eval_seconds_in_training"]
    assert {p.name for p in (out / "adapter").iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "sft_config.yaml",
        "chat_template.jinja",
    }
    assert (merged / "model.safetensors").is_file() and metrics["merge_max_logit_diff"] < 1e-3


def test_tensorboard_logs_land_in_the_stage_folder(tmp_path, tiny_model_dir):
    data = write_sft(tmp_path / "sft.jsonl", count=8)
    run = Run(tmp_path / "run")
    sft_stage(
        run, tiny_cfg(tiny_model_dir, "sft.merge=false", "sft.epochs=1", "sft.report_to=[tensorboard]"), data_path=data
    )
    assert any((run.stage_dir("sft") / "logs").rglob("events.out.tfevents*"))


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated interruption")


def losses(run):
    history = json.loads((run.stage_dir("sft") / "log_history.json").read_text())
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_resume_from_checkpoint_gives_the_same_losses(tmp_path, tiny_model_dir):
    data = write_sft(tmp_path / "sft.jsonl")
    cfg = tiny_cfg(tiny_model_dir, "sft.merge=false", "sft.lora.dropout=0.1")
    straight = Run(tmp_path / "straight")
    sft_stage(straight, cfg, data_path=data)
    interrupted = Run(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        sft_stage(interrupted, cfg, data_path=data, progress=StopAt(3))  # checkpoint-2 exists by then
    assert read_manifest(interrupted.stage_dir("sft")).status == "failed"
    assert (interrupted.stage_dir("sft") / "checkpoints" / "checkpoint-2").is_dir()
    sft_stage(interrupted, cfg, data_path=data)
    assert read_manifest(interrupted.stage_dir("sft")).metrics["resumed"] is True
    expected, resumed = losses(straight), losses(interrupted)
    assert set(resumed) == set(expected) == set(range(1, 9))  # steps 1-2 come from checkpoint-2's state
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], rel=1e-5), step


def test_nan_loss_stops_training_with_a_clear_error(tmp_path, tiny_model_dir):
    data = write_sft(tmp_path / "sft.jsonl")
    with pytest.raises(NonFiniteLossError, match="loss became nan"):
        sft_stage(
            Run(tmp_path / "run"), tiny_cfg(tiny_model_dir, "sft.learning_rate=1e30", "sft.merge=false"), data_path=data
        )


def test_too_many_unmaskable_rows_fail_the_stage(tmp_path, tiny_model_dir):
    data = write_sft(tmp_path / "sft.jsonl")
    # Prompts take ~30 tokens: at max_length 20 every response is cut away entirely.
    with pytest.raises(TooManyDroppedError, match="16 of 16 rows could not be masked"):
        sft_stage(Run(tmp_path / "run"), tiny_cfg(tiny_model_dir, "sft.max_length=20"), data_path=data)


def test_merge_logits_match_base_plus_adapter(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from selftune.models import load_model, load_tokenizer
    from selftune.train.merge import merge_adapter

    data = write_sft(tmp_path / "sft.jsonl")
    run = Run(tmp_path / "run")
    sft_stage(run, tiny_cfg(tiny_model_dir, "sft.merge=false"), data_path=data)
    adapter = run.stage_dir("sft") / "adapter"
    result = merge_adapter(str(tiny_model_dir), adapter, tmp_path / "merged")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = tokenizer(["A different input than the merge check uses."], return_tensors="pt")
    with torch.no_grad():
        stacked = PeftModel.from_pretrained(load_model(str(tiny_model_dir), dtype="float32"), str(adapter))(
            **ids
        ).logits
        merged = load_model(str(result.path), dtype="float32")(**ids).logits
        base = load_model(str(tiny_model_dir), dtype="float32")(**ids).logits
    assert torch.allclose(stacked, merged, atol=1e-4)
    assert not torch.allclose(base, merged, atol=1e-4)  # the adapter really changed something


def test_response_loss_with_the_head_on_answers_only_equals_the_models_own_loss(tmp_path, tiny_model_dir):
    """The SFT trainer runs the LM head only from the first answer position; its loss and every
    LoRA gradient must equal those of the model's own loss over the full logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from selftune.models import load_model, load_tokenizer
    from selftune.train.masking import tokenize_example
    from selftune.train.sft import ResponseTrainer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.padding_side = "right"
    rows = [
        tokenize_example(
            tokenizer,
            {
                "prompt": [{"role": "user", "content": "Q" * (k + 1) + " tell me"}],
                "completion": [{"role": "assistant", "content": ANSWERS[k]}],
            },
        )
        for k in range(4)
    ]
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(rows)
    model = get_peft_model(
        load_model(str(tiny_model_dir), dtype="float32"),
        LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False),
    )
    trainer = ResponseTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    )
    items = (batch["labels"] != -100).sum()
    ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    reference = model(**batch, num_items_in_batch=items).loss
    reference.backward()
    assert torch.allclose(ours, reference, atol=1e-5)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(grads[name], param.grad, atol=1e-6, rtol=1e-4), name
    # The saving is real: the head saw fewer positions than the batch is wide.
    first_answer = min(r["labels"].index(next(x for x in r["labels"] if x != -100)) for r in rows)
    assert first_answer > 5


def test_rerunning_a_finished_sft_stage_retrains_instead_of_resuming_its_last_checkpoint(tmp_path, tiny_model_dir):
    """Issue 16 defect 5: `--from sft` (or `selftune sft` again) on a finished stage resumed from
    its last checkpoint, trained 0 steps and recorded train_loss 0.0."""
    data = write_sft(tmp_path / "sft.jsonl")
    cfg = tiny_cfg(tiny_model_dir, "sft.merge=false")
    run = Run(tmp_path / "run")
    sft_stage(run, cfg, data_path=data)
    first = read_manifest(run.stage_dir("sft")).metrics
    sft_stage(run, cfg, data_path=data)  # reuse is off, as for a stage command or --from
    second = read_manifest(run.stage_dir("sft")).metrics
    assert second["resumed"] is False and second["steps"] == first["steps"] > 0
    assert second["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5) and second["train_loss"] > 0
    assert set(losses(run)) == set(range(1, first["steps"] + 1))
