import pytest
import torch

from selftune.generation.hf import HFGenerator
from selftune.generation.types import SamplingParams
from selftune.models import load_model, load_tokenizer
from tests.conftest import CHAT_PROMPTS


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = load_model(str(tiny_model_dir), dtype="float32")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    return model, tokenizer


def texts(results):
    return [[c.text for c in completions] for completions in results]


def test_greedy_batch_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=12)
    batched = HFGenerator(model, tokenizer, batch_size=8).generate(CHAT_PROMPTS, params)
    alone = [HFGenerator(model, tokenizer, batch_size=1).generate([p], params)[0] for p in CHAT_PROMPTS]
    assert texts(batched) == texts(alone)
    assert [c[0].completion_tokens for c in batched] == [c[0].completion_tokens for c in alone]
    # Prompts of different lengths really were padded together: the test would be empty otherwise.
    lengths = {c[0].prompt_tokens for c in batched}
    assert len(lengths) > 1


def matmul_is_batch_invariant() -> bool:
    """Whether this machine's fp32 matrix product gives a row the same bits alone as in a batch
    (MKL's AVX-512 kernels, for one, block the sum differently by the number of rows)."""
    generator = torch.Generator().manual_seed(0)
    weight, rows = torch.randn(576, 1536, generator=generator), torch.randn(40, 576, generator=generator)
    return torch.equal(rows[:1] @ weight, (rows @ weight)[:1])


def test_sampled_answers_do_not_depend_on_the_batch(tiny):
    """Other batch sizes and another prompt order give each (prompt, sample) the same answer where
    a row's logits do not depend on its batch; the per-row seeds do the rest. The tiny random
    model's near-flat distributions turn any last-bit difference of the logits into another token."""
    if not matmul_is_batch_invariant():
        pytest.skip("this CPU's fp32 matrix product depends on the number of rows (AVX-512 kernels)")
    model, tokenizer = tiny
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    first = HFGenerator(model, tokenizer, batch_size=16).generate(CHAT_PROMPTS, params)
    reordered = HFGenerator(model, tokenizer, batch_size=3).generate(CHAT_PROMPTS[::-1], params)
    assert texts(reordered)[::-1] == texts(first)


def test_sampling_is_reproducible_with_its_seeds(tiny):
    model, tokenizer = tiny
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    first = HFGenerator(model, tokenizer, batch_size=16).generate(CHAT_PROMPTS, params)
    again = HFGenerator(model, tokenizer, batch_size=16).generate(CHAT_PROMPTS, params)
    assert texts(first) == texts(again)
    # Samples differ from each other, and another seed gives other answers.
    assert len(set(texts(first)[1])) > 1
    other = HFGenerator(model, tokenizer, batch_size=16).generate(
        CHAT_PROMPTS, SamplingParams(**{**params.__dict__, "seed": 8})
    )
    assert texts(other) != texts(first)
    assert all(c.seed is not None for row in first for c in row)


def test_finish_reason_stop_and_length(tiny):
    model, tokenizer = tiny
    prompt = [CHAT_PROMPTS[1]]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    [[free]] = HFGenerator(model, tokenizer, batch_size=4).generate(prompt, params)
    assert free.finish_reason == "length" and free.completion_tokens == 10
    # Declare a token the model wrote as a stop token: the same sampled answer must end there.
    new = tokenizer(free.text, add_special_tokens=False)["input_ids"]
    stop_at = next(k for k in range(1, len(new)) if new[k] not in new[:k])
    stopping = HFGenerator(model, tokenizer, batch_size=4, stop_ids=[new[stop_at]])
    [[stopped]] = stopping.generate(prompt, params)
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == stop_at + 1
    assert stopped.text == tokenizer.decode(new[:stop_at], skip_special_tokens=True)


def test_stop_ids_include_chat_end_of_turn(tiny):
    _, tokenizer = tiny
    generator = HFGenerator(None, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generator.stop_ids


def test_sampling_params_are_checked():
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


@pytest.mark.parametrize("top_p,stages", [(1.0, (64, 512)), (0.9, (64, 512)), (0.9, (4, 39)), (0.9, (2, 4))])
def test_row_sampler_draws_from_the_truncated_distribution(top_p, stages, monkeypatch):
    import collections

    from selftune.generation import sampling
    from selftune.generation.sampling import RowSampler

    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 0.7
    probs = (logits / 0.8).softmax(-1)[0]
    values, order = probs.sort(descending=True)
    keep = (values.cumsum(0) - values) < top_p
    expected = torch.zeros(40)
    expected[order[keep]] = values[keep] / values[keep].sum()
    # Stages: (64, 512) exceed the 40 tokens (a full sort); (4, 39) find the nucleus in the
    # second shortlist; (2, 4) are too short for it and fall back to the full sort.
    monkeypatch.setattr(sampling, "NUCLEUS_STAGES", stages)
    # 10,000 rows of the same logits, each with its own seed, drawn in one call.
    sampler = RowSampler(list(range(10000)), SamplingParams(temperature=0.8, top_p=top_p))
    draws = collections.Counter(sampler(None, logits.expand(10000, 40)).argmax(dim=-1).tolist())
    observed = torch.tensor([draws[i] / 10000 for i in range(40)])
    assert all(expected[token] > 0 for token in draws)
    assert (observed - expected).abs().max() < 0.015


@pytest.mark.parametrize("scale", [0.01, 1.0, 4.0])
def test_the_nucleus_beyond_the_shortlists_holds_exactly_the_kept_tokens_in_id_order(scale, monkeypatch):
    """The full path (a nucleus larger than every shortlist, as a random model's flat
    distribution gives) against the definition: sort, keep while the mass above is below top_p,
    with ties of the last kept token."""
    from selftune.generation import sampling

    monkeypatch.setattr(sampling, "NUCLEUS_STAGES", (2, 4))
    torch.manual_seed(1)
    probs = (torch.randn(6, 3000) * scale).softmax(-1)
    probs[0, :10] = probs[0, 10]  # ties at the boundary, somewhere
    ids, sizes = sampling._nucleus(probs, 0.9)
    for row in range(6):
        values = probs[row].sort(descending=True).values
        size = int(((values.double().cumsum(0) - values.double()) < 0.9).sum())
        expected = (probs[row] >= values[size - 1]).nonzero().flatten()
        assert sizes[row] == len(expected)
        assert torch.equal(ids[row, : len(expected)], expected)
        assert (ids[row, len(expected) :] == 3000).all()
