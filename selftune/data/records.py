"""Record schemas (prompts, samples, SFT examples, preference pairs) and JSONL validation.

Formats are described in docs/data.md and stay readable by TRL (conversational prompt/completion and
prompt/chosen/rejected), LLaMA-Factory and Axolotl. Fields beyond the schema are kept.

Every stage validates its input first. A bad file fails whole, before anything is written, with
one line per problem in the form `file:line: field: problem`:

    data/prompts.jsonl:3: messages[0].role: unknown value 'bot' (expected 'system', 'user', 'assistant')

Usage:
    from selftune.data.records import read_records
    prompts = read_records("prompts.jsonl", "prompts")      # list[PromptRecord] or RecordError

    selftune validate pairs.jsonl --kind pairs
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from selftune.data.constraints.registry import validated_params
from selftune.errors import RecordError

# Imported where used: datasets (0.9 s) and pyarrow only for a file in their formats; every
# command that reads records (`validate`, the config checks) starts without them.

Role = Literal["system", "user", "assistant"]


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(Record):
    role: Role
    content: str

    @field_validator("content")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        return _not_blank(value)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("empty text")
    return value


Id = Annotated[str, AfterValidator(_not_blank)]


def _ends_with_user(messages: list[Message], field: str) -> None:
    if messages and messages[-1].role != "user":
        raise _FieldProblem(field, f"the last message must have role 'user', not {messages[-1].role!r}")


def _assistant_only(messages: list[Message], field: str) -> None:
    roles = sorted({m.role for m in messages} - {"assistant"})
    if roles:
        raise _FieldProblem(field, f"messages must have role 'assistant', not {', '.join(map(repr, roles))}")


def message_text(messages: list[Message] | list[dict]) -> str:
    """The text of a message list (contents joined by newlines)."""
    return "\n".join(m["content"] if isinstance(m, dict) else m.content for m in messages)


class Constraint(Record):
    type: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_type_and_valid_kwargs(self):
        # Checked when the file is read, so a typo fails before any model answers the prompts.

        try:
            validated_params(self.type, self.kwargs)
        except ValidationError as exc:  # first: a ValidationError is a ValueError too
            problems = "; ".join(f"{_field_name(e['loc']) or 'kwargs'}: {e['msg']}" for e in exc.errors())
            raise _FieldProblem("kwargs", f"not valid for {self.type}: {problems}") from None
        except ValueError as exc:  # an unknown type
            raise _FieldProblem("type", str(exc)) from None
        return self


class PromptRecord(Record):
    id: Id
    messages: list[Message] = Field(min_length=1)
    constraints: list[Constraint] = Field(default_factory=list)
    split: Literal["train", "eval"] = "train"

    @model_validator(mode="after")
    def _ends_with_user(self):
        _ends_with_user(self.messages, "messages")
        return self


class SampleRecord(Record):
    prompt_id: Id
    model: str
    completion: str
    score: float = Field(ge=0, le=1)
    checks: dict[str, Any] = Field(default_factory=dict)
    sample_index: int = Field(ge=0)
    seed: int | None = None

    @field_validator("score", mode="before")
    @classmethod
    def _a_number(cls, value):
        if isinstance(value, bool):  # JSON true would become 1.0
            raise ValueError(f"expected a number from 0 to 1, got {str(value).lower()}")
        return value


def best_first(tie_break: str):
    """Sort key that puts the best sample first: the highest score, then among equal scores the one
    `tie_break` keeps (`sft_data.tie_break`: the SFT data's answer, and the pairs stage's chosen
    policy sample)."""
    return {
        "shortest": lambda s: (-s.score, len(s.completion), s.sample_index),
        "longest": lambda s: (-s.score, -len(s.completion), s.sample_index),
        "first": lambda s: (-s.score, s.sample_index),
    }[tie_break]


class SFTRecord(Record):
    id: Id
    prompt: list[Message] = Field(min_length=1)
    completion: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _turns(self):
        _ends_with_user(self.prompt, "prompt")  # else the model would learn to answer itself
        _assistant_only(self.completion, "completion")
        return self


class PairRecord(Record):
    id: Id
    prompt: list[Message] = Field(min_length=1)
    chosen: list[Message] = Field(min_length=1)
    rejected: list[Message] = Field(min_length=1)
    negative_source: str
    chosen_score: float | None = None
    rejected_score: float | None = None

    @model_validator(mode="after")
    def _different(self):
        _ends_with_user(self.prompt, "prompt")
        _assistant_only(self.chosen, "chosen")
        _assistant_only(self.rejected, "rejected")
        if message_text(self.chosen).strip() == message_text(self.rejected).strip():
            raise _FieldProblem("rejected", "identical to chosen")
        return self


class GenerateInput(Record):
    """A row of `selftune generate --prompts`: an id and either raw text or chat messages."""

    id: Id
    prompt: str | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.prompt is None) == (self.messages is None):
            raise _FieldProblem("prompt", "give exactly one of 'prompt' (a string) or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise _FieldProblem("prompt", "empty text")
        return self


KINDS: dict[str, type[Record]] = {
    "prompts": PromptRecord,
    "samples": SampleRecord,
    "sft": SFTRecord,
    "pairs": PairRecord,
    "generate": GenerateInput,
}


class _FieldProblem(ValueError):
    """Raised inside a model validator to blame a named field rather than the whole record."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _identity(kind: str, record: Record) -> tuple[str, Any]:
    """The field that must be unique within a file, and its value."""
    if kind == "samples":
        return "sample_index", (record.prompt_id, record.sample_index)
    return "id", record.id


def read_records(path: Path | str, kind: str) -> list[Record]:
    """Parse and validate a JSONL file; raise RecordError listing every bad line."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    path = Path(path)
    return validate_rows(path, _jsonl_rows(path, read_text(path, "a JSONL file")), kind)


def _jsonl_rows(path: Path, text: str):
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield f"{path}:{number}", parse_json_line(line)


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file's contents (a leading byte-order mark is fine), or a RecordError naming
    the file: missing, a folder, or not UTF-8."""
    if path.is_dir():
        raise RecordError([f"{path}: is a folder, not {what}"])
    if not path.is_file():
        raise RecordError([f"{path}: file not found"])
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # The line and column an editor shows, beside the byte's value and offset in the file.
        start = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, start) + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        raise RecordError(
            [
                f"{path}:{line}: not UTF-8 text (byte 0x{raw[start]:02x} at column {column}, "
                f"offset {start} of the file: {exc.reason})"
            ]
        ) from None


DATA_FORMATS = ".jsonl, .json (an array of objects), .csv, .parquet or a `datasets` folder (save_to_disk)"


def source_rows(path: Path):
    """(where, row) for each row of a data file in any supported format (`DATA_FORMATS`);
    `where` is `file:line` where the format has lines, else `file: row N` or `file: item N`."""
    if path.is_dir():
        if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
            raise RecordError([f"{path}: is a folder but not a saved `datasets` folder (use {DATA_FORMATS})"])
        import datasets

        for number, row in enumerate(datasets.load_from_disk(str(path)), start=1):
            yield f"{path}: row {number}", row
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        if not path.is_file():
            raise RecordError([f"{path}: file not found"])
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow's errors share no base class we could name
            raise RecordError([f"{path}: not a readable Parquet file ({exc})"]) from None
        for number, row in enumerate(table.to_pylist(), start=1):
            yield f"{path}: row {number}", row
        return
    if suffix not in (".jsonl", ".json", ".csv"):
        raise RecordError([f"{path}: unsupported format {suffix or '(no extension)'!r}; use {DATA_FORMATS}"])
    text = read_text(path, "a data file")
    if suffix == ".jsonl":
        yield from _jsonl_rows(path, text)
    elif suffix == ".json":
        data = parse_json_line(text)
        if isinstance(data, RowProblem):
            yield f"{path}", data
        elif not isinstance(data, list):
            raise RecordError([f"{path}: json: expected an array of objects, got {type(data).__name__}"])
        else:
            for index, row in enumerate(data):
                yield f"{path}: item {index}", row
    else:
        yield from _csv_rows(path, text)


def _csv_rows(path: Path, text: str):
    # The csv module rather than `datasets`: it gives each row's line number and names a broken row.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield where, RowProblem("csv", f"{len(row)} columns where the header has {len(header)}")
                continue
            yield where, {key: value for key, value in zip(header, row) if value != "" or key == "id"}
    except csv.Error as exc:
        raise RecordError([f"{path}:{reader.line_num}: csv: {exc}"]) from None


def parse_json_line(line: str) -> Any:
    """One JSONL line as data, or a `RowProblem` naming what is wrong with it."""
    try:
        return json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return RowProblem("json", f"{exc.msg} at column {exc.colno}")
    except _FieldProblem as exc:
        return RowProblem("json", exc.problem)


class RowProblem(NamedTuple):
    """A row that could not even be parsed: its field (json, csv...) and the problem."""

    field: str
    problem: str


def validate_rows(path: Path, rows, kind: str) -> list[Record]:
    """Validate `(where, data)` rows against `kind`'s schema; raise RecordError listing every bad
    row as `where: field: problem` (duplicates of the file's identity field included)."""
    schema = KINDS[kind]
    records: list[Record] = []
    problems: list[str] = []
    seen: dict[Any, str] = {}
    for where, data in rows:
        if isinstance(data, RowProblem):
            problems.append(f"{where}: {data.field}: {data.problem}")
            continue
        if not isinstance(data, dict):
            problems.append(f"{where}: record: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            record = schema.model_validate(data)
        except ValidationError as exc:
            problems.extend(f"{where}: {field}: {problem}" for field, problem in _explain(exc))
            continue
        field, key = _identity(kind, record)
        if key in seen:
            problems.append(f"{where}: {field}: duplicate {key!r} (first on {seen[key]})")
            continue
        line = where.removeprefix(f"{path}:")
        seen[key] = f"line {line}" if line.isdigit() else where
        records.append(record)
    if not records and not problems:
        problems.append(f"{path}: file holds no records")
    if problems:
        raise RecordError(problems)
    return records


def read_dataset(path: Path | str, kind: str) -> list[Record]:
    """SFT examples (`kind` "sft") or preference pairs ("pairs") from selftune's own JSONL or
    any of TRL's standard dataset formats, in any of `DATA_FORMATS`:

    - sft: conversational `messages` (the trailing assistant turns are the completion), or
      `prompt`/`completion` as strings or message lists;
    - pairs: `prompt`/`chosen`/`rejected` as strings or message lists, or implicit-prompt rows
      whose `chosen` and `rejected` are whole conversations sharing the prompt's turns.

    A row without an `id` gets `row-N`; an imported pair without `negative_source` gets
    "imported". A bad row is reported as `file:line: field: problem`, like a selftune file.
    """
    if kind not in TRL_CONVERTERS:
        raise ValueError(f"kind must be one of {', '.join(TRL_CONVERTERS)}, not {kind!r}")
    return convert_rows(Path(path), kind, TRL_CONVERTERS[kind])


def convert_rows(path: Path, kind: str, convert) -> list[Record]:
    """Every row of a data file (`source_rows`) through `convert(row, row_number)` into `kind`'s
    shape, then validated (`validate_rows`)."""
    rows = ((where, convert(row, number)) for number, (where, row) in enumerate(source_rows(path), start=1))
    return validate_rows(path, rows, kind)


def with_id(row: dict, default: str) -> dict:
    """A copy of a data row whose `id` is a string: its own, or `default` when it has none."""
    return {**row, "id": str(row["id"]) if row.get("id") is not None else default}


def _turns(value, role: str):
    """A string as one message of `role`; a message list as it is."""
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _sft_from_trl(row, number: int):
    if not isinstance(row, dict):  # a RowProblem or a non-object: validate_rows names it
        return row
    data = with_id(row, f"row-{number}")
    if "prompt" not in row and "completion" not in row and isinstance(row.get("messages"), list):
        messages = row["messages"]
        answer = len(messages)
        while answer > 0 and isinstance(messages[answer - 1], dict) and messages[answer - 1].get("role") == "assistant":
            answer -= 1
        if answer == len(messages) or answer == 0:
            return RowProblem("messages", "needs user turns followed by the assistant's answer (the completion)")
        data.pop("messages")
        data["prompt"], data["completion"] = messages[:answer], messages[answer:]
        return data
    if "text" in row and "prompt" not in row:
        return RowProblem("text", "a plain-text row has no prompt/answer split; give prompt/completion or messages")
    if "prompt" in row:
        data["prompt"] = _turns(row["prompt"], "user")
    if "completion" in row:
        data["completion"] = _turns(row["completion"], "assistant")
    return data


def _pair_from_trl(row, number: int):
    if not isinstance(row, dict):  # a RowProblem or a non-object: validate_rows names it
        return row
    data = with_id(row, f"row-{number}")
    data.setdefault("negative_source", "imported")
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if "prompt" not in row and isinstance(chosen, list) and isinstance(rejected, list):
        # Implicit prompt: the turns both conversations share, up to the last user turn.
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        while shared > 0 and not (isinstance(chosen[shared - 1], dict) and chosen[shared - 1].get("role") == "user"):
            shared -= 1
        if shared == 0:
            return RowProblem("prompt", "missing, and chosen and rejected share no user turn to take it from")
        data["prompt"], data["chosen"], data["rejected"] = chosen[:shared], chosen[shared:], rejected[shared:]
        return data
    if "prompt" in row:
        data["prompt"] = _turns(row["prompt"], "user")
    for side in ("chosen", "rejected"):
        if side in row:
            data[side] = _turns(row[side], "assistant")
    return data


TRL_CONVERTERS = {"sft": _sft_from_trl, "pairs": _pair_from_trl}


def _no_constant(name: str):
    # Python's json reads NaN and Infinity, which are not JSON and would slip through as numbers.
    raise _FieldProblem("json", f"{name} is not valid JSON (write a number or null)")


def _explain(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for error in exc.errors():
        context_error = (error.get("ctx") or {}).get("error")
        if isinstance(context_error, _FieldProblem):
            where = _field_name(error["loc"])
            out.append((f"{where}.{context_error.field}" if where else context_error.field, context_error.problem))
            continue
        field = _field_name(error["loc"]) or "record"
        kind, given = error["type"], error.get("input")
        if kind == "missing":
            problem = "missing"
        elif kind == "literal_error":
            expected = error["ctx"]["expected"].replace(" or ", ", ")
            problem = f"unknown value {given!r} (expected {expected})"
        elif kind.endswith("_type"):
            problem = f"expected {kind.removesuffix('_type').replace('_', ' ')}, got {type(given).__name__}"
        elif kind == "too_short":
            problem = "must not be empty"
        elif kind == "value_error":
            problem = str(context_error) if context_error else error["msg"]
        else:
            problem = error["msg"]
        out.append((field, problem))
    return out


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name
