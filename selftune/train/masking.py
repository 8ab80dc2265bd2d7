"""Response-only loss masks, found inside the full tokenization.

The response start is never assumed from a separately tokenized prompt: token boundaries shift
where prompt and response meet (BPE merges across the boundary), and such a mask goes wrong
silently. Instead we render the whole example to text, find the response's character span in it,
tokenize the whole text once, and map characters to tokens with the tokenizer's offset mapping
(or, for tokenizers without offsets, by decoding prefixes). A token is trained when it holds any
character of the response, so a token that merges the separator's last characters with the
response's first ones is trained (the model must learn to emit it); every other token is masked.
The token that closes the response (the chat template's end-of-turn token, or EOS for raw text)
is trained too, so the model learns to stop.

Usage:
    from selftune.train.masking import tokenize_example
    row = tokenize_example(tokenizer, {"prompt": [{"role": "user", "content": "Hi"}],
                                       "completion": [{"role": "assistant", "content": "Hello!"}]})
    row["input_ids"], row["labels"]     # labels are -100 except the response and its closing token

    selftune inspect masks --data sft.jsonl --model builtin:smollm2-135m-instruct -n 3
"""

from __future__ import annotations

from selftune.errors import SelftuneError, TooManyDroppedError
from selftune.models import end_of_turn_ids

IGNORE_INDEX = -100


class MaskingError(SelftuneError):
    """The response could not be located in the tokenized example."""


class ResponseTruncatedError(MaskingError):
    """Truncation to max_length removed the whole response."""


def _message_list(value) -> list[dict]:
    return [m if isinstance(m, dict) else m.model_dump() for m in value]


def response_separator(tokenizer, configured: str | None) -> str | None:
    """The separator an example is rendered with: None (the chat template) when the tokenizer has
    one, else the configured raw-text separator (`sft.response_separator`)."""
    return None if getattr(tokenizer, "chat_template", None) else configured


def render_example(tokenizer, example: dict, response_separator: str | None = None) -> tuple[str, int, int, bool]:
    """(full text, response start char, response end char, closing token appended as text).

    Conversational examples use the chat template; raw-text examples are
    prompt + separator + completion + EOS.
    """
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise MaskingError("raw-text examples need a string completion")
        if response_separator is None:
            raise MaskingError("raw-text examples need a response_separator (e.g. '\\nResponse:')")
        if tokenizer.eos_token is None:
            raise MaskingError("raw-text examples need a tokenizer with an EOS token to close the response")
        head = prompt + response_separator
        return head + completion + tokenizer.eos_token, len(head), len(head) + len(completion), True
    if not getattr(tokenizer, "chat_template", None):
        raise MaskingError(
            "conversational example but the tokenizer has no chat template; use raw text and a separator"
        )
    prompt_messages, completion_messages = _message_list(prompt), _message_list(completion)
    full = tokenizer.apply_chat_template(prompt_messages + completion_messages, tokenize=False)
    head = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    # Where the two renderings agree is certainly prompt; the answer is searched after that.
    agree = 0
    for a, b in zip(full, head):
        if a != b:
            break
        agree += 1
    content = "\n".join(m["content"] for m in completion_messages)
    for variant in (content, content.strip()):  # some templates trim the message content
        start = full.find(variant, agree) if variant else -1
        if start >= 0:
            return full, start, start + len(variant), False
    raise MaskingError("the response text does not appear in the chat template's rendering of the example")


def _token_spans(tokenizer, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's [start, end) character span."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]
    # Slow tokenizers have no offsets: decode growing prefixes instead (exact when decoding
    # reproduces the text, which is checked).
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    special = set(tokenizer.all_special_ids) - set(end_of_turn_ids(tokenizer))
    decoded = tokenizer.decode([i for i in ids if i not in special])
    if decoded != text[len(text) - len(decoded) :]:
        raise MaskingError("this tokenizer has no offsets and does not decode back to its text")
    shift = len(text) - len(decoded)
    spans, previous = [], shift
    for k in range(len(ids)):
        if ids[k] in special:
            spans.append((previous, previous))
            continue
        length = shift + len(tokenizer.decode([i for i in ids[: k + 1] if i not in special]))
        spans.append((previous, length))
        previous = length
    return ids, spans


def tokenize_example(
    tokenizer, example: dict, *, max_length: int | None = None, response_separator: str | None = None
) -> dict[str, list[int]]:
    """Token ids and labels for one example; labels are -100 except the response and its closing token.

    Raises MaskingError when the response cannot be located, and ResponseTruncatedError when
    truncation to `max_length` removes all of it (a partly cut response keeps its remaining part).
    """
    text, start, end, eos_appended = render_example(tokenizer, example, response_separator)
    is_raw = isinstance(example["prompt"], str)
    # A rendered chat template already holds its special tokens; raw text gets the usual ones.
    ids, spans = _token_spans(tokenizer, text, add_special_tokens=is_raw)
    trained = [k for k, (a, b) in enumerate(spans) if b > start and a < end and b > a]
    if not trained:
        raise MaskingError("no token covers the response text")
    # The closing token is whatever special token the template writes right after the answer
    # (<|im_end|>, <|eot_id|>, </s>, ...), or EOS for raw text.
    closing_ids = set(end_of_turn_ids(tokenizer)) | set(tokenizer.all_special_ids)
    after = trained[-1] + 1
    if after >= len(ids) or ids[after] not in closing_ids:
        raise MaskingError(
            f"the response is not followed by an end-of-turn or EOS token (found {ids[after : after + 1]}); "
            "the model would not learn to stop"
        )
    trained.append(after)
    labels = [IGNORE_INDEX] * len(ids)
    for k in trained:
        labels[k] = ids[k]
    if max_length is not None and len(ids) > max_length:
        if trained[0] >= max_length:
            raise ResponseTruncatedError(
                f"truncation to max_length={max_length} removed the whole response "
                f"(it starts at token {trained[0]} of {len(ids)})"
            )
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def trained_spans(input_ids: list[int], labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) runs of trained positions, for display."""
    runs, start = [], None
    for k, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = k
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, k))
            start = None
    return runs


def tokenize_dataset(
    tokenizer, records, *, max_length: int, response_separator: str | None, max_drop_share: float, source: str
) -> tuple[list[dict], dict]:
    """Masked rows and counts of dropped rows by reason; fails past `max_drop_share`."""
    rows, dropped = [], {}
    for record in records:
        example = {
            "prompt": [m.model_dump() for m in record.prompt],
            "completion": [m.model_dump() for m in record.completion],
        }
        try:
            rows.append(
                tokenize_example(tokenizer, example, max_length=max_length, response_separator=response_separator)
            )
        except MaskingError as exc:
            reason = type(exc).__name__
            dropped[reason] = dropped.get(reason, 0) + 1
    total_dropped = sum(dropped.values())
    if records and total_dropped / len(records) > max_drop_share:
        raise TooManyDroppedError(
            f"{source}: {total_dropped} of {len(records)} rows could not be masked ({dropped}); "
            f"more than sft.max_drop_share={max_drop_share}. Raise max_length or check the chat template."
        )
    return rows, dropped
