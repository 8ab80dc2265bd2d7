"""Response-only masks over three tokenizer families and four templates (property tests)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selftune.models import end_of_turn_ids
from selftune.train.masking import IGNORE_INDEX, MaskingError, ResponseTruncatedError, render_example, tokenize_example

SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
TEMPLATES = {
    "chatml": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "llama3": "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    "inst": "<s>{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}",
    "raw": None,
}
CORPUS = [
    "Instruction: write a poem about the sea.\nResponse: The sea is wide and blue, it sings.",
    "Hello, world! How are you today? I am fine: thanks. [INST] yes [/INST] ok.",
    "user\nassistant\nsystem\n\n  Numbers 1 2 3, punctuation ... !? ;: - * ** ******",
    "lowercase words, UPPERCASE WORDS, MixedCase Words. <<title>> SECTION 1 P.S.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:;!?*-[]<>'\"/()\n",
] * 20


def _wrap(tokenizer_object):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        additional_special_tokens=SPECIALS[3:],
    )


@pytest.fixture(scope="module")
def tokenizer_families(smollm_tokenizer_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>")
    )
    smollm = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    # Templates of other families need their control tokens in the vocabulary, as real models have.
    smollm.add_special_tokens({"additional_special_tokens": [t for t in SPECIALS if t not in smollm.get_vocab()]})
    return {
        "smollm2-bpe": smollm,
        "byte-bpe": _wrap(bpe),
        "unigram": _wrap(unigram),
    }


def with_template(tokenizer, name):
    tokenizer.chat_template = TEMPLATES[name]
    return tokenizer


def make_example(template, response):
    if template == "raw":
        return {"prompt": "Instruction: greet me", "completion": response}
    return {
        "prompt": [{"role": "user", "content": "Greet me, please."}],
        "completion": [{"role": "assistant", "content": response}],
    }


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def assert_mask_is_exact(tokenizer, template, response):
    example = make_example(template, response)
    separator = "\nResponse:" if template == "raw" else None
    row = tokenize_example(tokenizer, example, response_separator=separator)
    ids, labels = row["input_ids"], row["labels"]
    trained = [k for k, label in enumerate(labels) if label != IGNORE_INDEX]
    assert trained == list(range(trained[0], trained[-1] + 1)), "trained positions must be one run"
    assert all(labels[k] == ids[k] for k in trained)
    text, start, end, _ = render_example(tokenizer, example, separator)
    rendered_response = text[start:end]
    if decode(tokenizer, ids) == text:
        before_response = decode(tokenizer, ids[: trained[0]])
        through_response = decode(tokenizer, ids[: trained[-1]])
        # Masked tokens hold no character of the response ...
        assert text.startswith(before_response) and len(before_response) <= start
        # ... the first trained token holds some (the run is minimal) ...
        assert len(decode(tokenizer, ids[: trained[0] + 1])) > start
        # ... and the run ends exactly where the response ends.
        assert text[: len(through_response)] == through_response and len(through_response) == end
        assert text[end:].startswith(decode(tokenizer, ids[trained[-1] : trained[-1] + 1]))
    else:
        # Metaspace decoders do not reproduce spacing exactly: compare the pieces' characters,
        # whitespace aside.
        def squash(value):
            return "".join(value.split()).replace("\u2581", "")

        pieces = tokenizer.convert_ids_to_tokens(ids)
        masked, response_pieces = (
            squash("".join(pieces[: trained[0]])),
            squash("".join(pieces[trained[0] : trained[-1]])),
        )
        assert squash(text[:start]).startswith(masked)
        assert response_pieces.endswith(squash(rendered_response))
        assert len(response_pieces) - len(squash(rendered_response)) <= len(squash(pieces[trained[0]]))
    # The closing token follows, and is trained.
    assert ids[trained[-1]] in set(end_of_turn_ids(tokenizer)) | set(tokenizer.all_special_ids)
    assert rendered_response.strip() == response.strip() and rendered_response.strip()


RESPONSES = (
    st.lists(
        st.sampled_from(list("abcXYZ019 \n,.:!?*-[]<>'\"/") + ["Response", "assistant", "\n\n", " ]", "INST"]),
        min_size=1,
        max_size=20,
    )
    .map("".join)
    .filter(lambda s: s.strip())
)


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("family", ["smollm2-bpe", "byte-bpe", "unigram"])
def test_mask_covers_exactly_the_response(tokenizer_families, family, template):
    tokenizer = with_template(tokenizer_families[family], template)
    for response in [
        " starts with a space",
        "\nstarts with a newline",
        ", starts with punctuation",
        ":merges with the separator",
        "]] merges with [/INST]",
        "plain answer.",
        "a",
    ]:
        assert_mask_is_exact(tokenizer, template, response)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(RESPONSES)
    def random_responses(response):
        assert_mask_is_exact(tokenizer, template, response)

    random_responses()


def test_truncation_partly_cut_trains_the_rest_and_fully_cut_raises(tokenizer_families):
    tokenizer = with_template(tokenizer_families["smollm2-bpe"], "chatml")
    example = make_example("chatml", "one two three four five six seven eight nine ten")
    full = tokenize_example(tokenizer, example)
    first = full["labels"].index(next(label for label in full["labels"] if label != IGNORE_INDEX))
    cut = tokenize_example(tokenizer, example, max_length=first + 3)
    assert len(cut["input_ids"]) == first + 3
    assert cut["labels"][first:] == full["labels"][first : first + 3]
    with pytest.raises(ResponseTruncatedError, match="removed the whole response"):
        tokenize_example(tokenizer, example, max_length=first)


def test_unlocatable_response_fails_loudly(tokenizer_families):
    tokenizer = with_template(tokenizer_families["byte-bpe"], "chatml")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"  # drops the content
    with pytest.raises(MaskingError, match="does not appear"):
        tokenize_example(tokenizer, make_example("chatml", "hello"))
    with pytest.raises(MaskingError, match="response_separator"):
        tokenize_example(tokenizer, make_example("raw", "hello"))


def test_end_of_turn_ids_are_exactly_the_candidates_in_the_vocabulary(tokenizer_families):
    """Looked up one by one (not through get_vocab(), 30 ms a call), with an unknown token's
    fallback to <unk> never taken for a hit."""
    from selftune.models.loading import _END_OF_TURN_TOKENS, end_of_turn_ids

    for name, tokenizer in tokenizer_families.items():
        vocab = tokenizer.get_vocab()
        expected = {vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab} | {tokenizer.eos_token_id}
        assert end_of_turn_ids(tokenizer) == sorted(expected), name
        assert any(t not in vocab for t in _END_OF_TURN_TOKENS), name  # the unknown-token path is taken
