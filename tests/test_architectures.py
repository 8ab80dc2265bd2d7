"""Tiny random Qwen2, Mistral, Gemma2 and Phi3 models next to the Llama one, through the code that
depends on a model's internals: masking, the continuous engine (or its fallback), SFT with merge,
DPO with prompt sharing (proved equal to whole sequences, or turned off) and merge.

Each runs the tiny pipeline up to DPO on a small prompt set through the Python API.
"""

import pytest
import torch

from tests.conftest import TINY_ARCHITECTURES, build_tiny_model

OTHERS = [arch for arch in TINY_ARCHITECTURES if arch != "llama"]  # llama: the rest of the suite


@pytest.fixture(scope="module", params=OTHERS)
def arch_model(request, tmp_path_factory, smollm_tokenizer_dir):
    return request.param, build_tiny_model(
        tmp_path_factory.mktemp(request.param), smollm_tokenizer_dir, arch=request.param
    )


def test_masking_marks_exactly_the_answer_with_each_architectures_tokenizer(arch_model):
    from selftune.models import load_tokenizer
    from selftune.train.masking import IGNORE_INDEX, tokenize_example

    _, model_dir = arch_model
    tokenizer = load_tokenizer(str(model_dir))
    row = tokenize_example(
        tokenizer,
        {
            "prompt": [{"role": "user", "content": "Name a fruit."}],
            "completion": [{"role": "assistant", "content": "An apple."}],
        },
        max_length=128,
    )
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained).startswith("An apple.") and len(trained) < len(row["input_ids"]) // 2


def test_greedy_answers_of_the_default_backend_equal_plain_generate(arch_model):
    """The continuous engine serves the model (its self-check passed) or the HF backend does."""
    from selftune.generation.factory import open_generator
    from selftune.generation.hf import HFGenerator
    from selftune.generation.types import SamplingParams
    from selftune.models import load_model, load_tokenizer

    _, model_dir = arch_model
    prompts = [[{"role": "user", "content": "Say hi."}], [{"role": "user", "content": "Count to three, please."}]]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    with open_generator(str(model_dir), backend="auto", batch_size=4, dtype="float32") as generator:
        ours = [[c.text for c in answers] for answers in generator.generate(prompts, params)]
    reference = HFGenerator(load_model(str(model_dir), dtype="float32"), load_tokenizer(str(model_dir)), batch_size=4)
    assert ours == [[c.text for c in answers] for answers in reference.generate(prompts, params)]


@pytest.mark.long
def test_sft_merge_pairs_and_dpo_run_and_prompt_sharing_is_proved_or_off(arch_model, tmp_path):
    import selftune
    from selftune.data.records import read_records
    from selftune.models import load_model, load_tokenizer
    from selftune.train.logprobs import SHARING_TOLERANCE, PairCollator, prompt_sharing_mismatch, tokenize_pairs

    arch, model_dir = arch_model
    cfg = selftune.load_config(
        "tiny",
        overrides=[
            f"model.spec={model_dir}",
            "prompts.n_train=8",
            "prompts.n_eval=2",
            "generation.max_new_tokens=16",
            "sample.k=3",
            "pairs.k=1",
            "pairs.eval_prompts=0",
            "sft.warmup_ratio=0",
            "dpo.warmup_ratio=0",
        ],
    )  # few steps: no warm-up
    steps = selftune.run_pipeline(tmp_path / "run", cfg, until_stage="dpo", on_event=lambda line: None)
    assert [step.step.stage for step in steps][-1] == "dpo"
    run = selftune.Run(tmp_path / "run")
    sft_model, dpo_model = run.output_of("sft", "merged"), run.output_of("dpo", "merged")
    before, after = load_model(str(sft_model), dtype="float32"), load_model(str(dpo_model), dtype="float32")
    changed = [
        name for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)
    ]
    assert changed, f"{arch}: DPO's merged model equals its SFT model"
    shared = run.manifest("dpo").metrics["share_prompts"]
    if shared:  # the DPO stage shared prompts: prove it equals whole sequences on this model
        tokenizer = load_tokenizer(str(sft_model))
        rows, _ = tokenize_pairs(
            tokenizer,
            read_records(run.output_of("pairs", "pairs"), "pairs"),
            max_length=256,
            response_separator=None,
            max_drop_share=1.0,
            source="pairs",
        )
        gap = prompt_sharing_mismatch(before, rows[:4], PairCollator(tokenizer.pad_token_id))
        assert gap <= SHARING_TOLERANCE, (arch, gap)
