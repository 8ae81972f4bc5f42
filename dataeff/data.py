"""Examples and task descriptions, and loaders for JSONL/CSV files of prompt/answer rows.

A row is ``{"prompt": str, "answer": str}`` plus optional ``id`` and any extra fields (kept in
``Example.meta``). An unlabeled pool may omit ``answer`` (``require_answer=False``).

Two ways to read a file: :func:`read_rows` keeps the good rows and reports every bad one
(:class:`RejectedRow`: line, id, why); :func:`read_examples` (and :func:`read_jsonl`,
:func:`read_csv`) is all or nothing, raising one :class:`~dataeff.errors.DataError` that names
every bad row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataeff.errors import DataError


@dataclass(frozen=True)
class Example:
    """One item of a task.

    Attributes:
        prompt: the text the model sees (before any chat template).
        answer: the gold answer, or ``None`` for an unlabeled item.
        id: a stable identifier (external id in Label Studio, row index in a file).
        meta: anything else carried along (annotation id, updated_at, split, ...).
    """

    prompt: str
    answer: str | None = None
    id: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: how to prompt, which answers are allowed, how to score.

    Attributes:
        name: short task name (e.g. ``"intent_recognition"``).
        labels: the closed label set for choice tasks; ``None`` for free-form answers.
        metric: ``"exact_match"`` (accuracy after normalisation) or ``"f1"`` (token F1).
        instructions: one line shown to annotators and prepended to nothing (prompts are final).
    """

    name: str
    labels: tuple[str, ...] | None = None
    metric: str = "exact_match"
    instructions: str = ""

    def __post_init__(self) -> None:
        if self.metric not in ("exact_match", "f1"):
            raise DataError(f"task {self.name!r}: metric must be 'exact_match' or 'f1', got {self.metric!r}")

    @property
    def is_choice(self) -> bool:
        return bool(self.labels)


@dataclass(frozen=True)
class RejectedRow:
    """A row of a data file that was not read, and why.

    Attributes:
        path: the file.
        line: 1-based line of the row (its first physical line for a multi-line CSV row).
        id: the row's ``id`` field when it could be read, else None.
        reason: what is wrong and how to fix it.
    """

    path: str
    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        named = f" (id {self.id!r})" if self.id is not None else ""
        return f"{self.path}:{self.line}{named}: {self.reason}"

    def as_dict(self) -> dict:
        return {"file": self.path, "line": self.line, "id": self.id, "reason": self.reason}


@dataclass(frozen=True)
class ReadResult:
    """The good rows of a data file and every bad one.

    Attributes:
        examples: the rows that were read, in file order.
        rejected: one :class:`RejectedRow` per row that was not, in file order.
    """

    examples: list[Example]
    rejected: list[RejectedRow]


def _row_to_example(row: object, index: int, require_answer: bool) -> Example:
    """The example of one parsed row; ``index`` (the row's position among the file's rows) is its id
    when it has none. Raises DataError (without a location) saying what is wrong."""
    if not isinstance(row, dict):
        raise DataError(f"expected an object with 'prompt' and 'answer', got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError("missing or empty 'prompt' field; every row needs a non-empty prompt string")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    if require_answer and (answer is None or not answer.strip()):
        raise DataError("missing or empty 'answer' field; label this row or remove it")
    ex_id = row.get("id")
    if ex_id is not None and not str(ex_id).strip():
        raise DataError("empty 'id' field; give the row a stable id or leave the field out")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "answer", "id")}
    return Example(prompt=prompt, answer=answer, id=str(ex_id) if ex_id is not None else str(index), meta=meta)


def _row_id(row: object) -> str | None:
    """The ``id`` field of a parsed row, if it has a usable one (for naming a bad row)."""
    if isinstance(row, dict) and row.get("id") is not None and str(row["id"]).strip():
        return str(row["id"])
    return None


class _Collector:
    """Accumulates a file's good rows and bad rows; rejects a repeated id (naming its first line)."""

    def __init__(self, path: Path, require_answer: bool) -> None:
        self.path, self.require_answer = path, require_answer
        self.examples: list[Example] = []
        self.rejected: list[RejectedRow] = []
        self.first_line: dict[str, int] = {}
        self.rows = 0

    def _reject(self, line: int, row_id: str | None, reason: str) -> None:
        self.rejected.append(RejectedRow(str(self.path), line, row_id, reason))

    def unreadable(self, line: int, reason: str) -> None:
        """A row that could not even be parsed (bytes, JSON): it counts as a row, with no id."""
        self.rows += 1
        self._reject(line, None, reason)

    def add(self, line: int, row: object) -> None:
        """One parsed row; its position among the file's rows (good or bad) is its id when it has none."""
        index, self.rows = self.rows, self.rows + 1
        try:
            ex = _row_to_example(row, index, self.require_answer)
        except DataError as exc:
            self._reject(line, _row_id(row), str(exc))
            return
        ex_id = str(ex.id)  # _row_to_example always gives one
        if ex_id in self.first_line:
            self._reject(
                line, ex_id, f"duplicate id {ex_id!r} (first on line {self.first_line[ex_id]}); ids must be unique"
            )
            return
        self.first_line[ex_id] = line
        self.examples.append(ex)

    def result(self) -> ReadResult:
        return ReadResult(self.examples, self.rejected)


def read_jsonl_rows(path: str | Path, *, require_answer: bool = True) -> ReadResult:
    """Read a JSONL file of prompt/answer rows, keeping the good rows and reporting every bad one.

    Blank lines are skipped. A bad row (non-UTF-8 bytes, invalid JSON, not an object, missing or
    empty prompt, missing answer when ``require_answer``, empty or duplicate id) becomes a
    :class:`RejectedRow` with its line; the rest are read. A row without an id gets its position
    among the file's non-blank rows, bad ones included (so fixing a bad row later renumbers nothing).

    Raises:
        DataError: the file is missing or has no rows at all.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows = _Collector(path, require_answer)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                rows.unreadable(
                    lineno, f"not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8"
                )
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.unreadable(lineno, f"invalid JSON ({exc.msg}); each line must be one JSON object")
                continue
            rows.add(lineno, row)
    if not rows.rows:
        raise DataError(f"{path}: no rows; expected one JSON object per line with 'prompt' and 'answer'")
    return rows.result()


def read_csv_rows(path: str | Path, *, require_answer: bool = True) -> ReadResult:
    """Read a CSV file with a header naming ``prompt`` (and ``answer``), keeping the good rows and
    reporting every bad one (as :func:`read_jsonl_rows`; a row holding non-UTF-8 bytes is one).

    Raises:
        DataError: the file is missing, its header has no ``prompt`` column (or is not UTF-8), or
            there are no rows under the header.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    # Undecodable bytes become lone surrogates, so the rows holding them can be told apart.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    # newline="" keeps line breaks inside quoted fields; line_num counts physical lines of multi-line rows.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames and any(_bad_bytes(f) for f in reader.fieldnames):
        raise DataError(f"{path}:1: the header is not valid UTF-8; re-save the file as UTF-8")
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise DataError(f"{path}: the header must name a 'prompt' column (found {reader.fieldnames})")
    rows = _Collector(path, require_answer)
    start = reader.line_num + 1
    for row in reader:
        bad = next((b for v in row.values() for b in _bad_bytes(v)), None)
        if bad is not None:
            rows.unreadable(start, f"not valid UTF-8 (byte 0x{bad:02x}); re-save the file as UTF-8")
        else:
            rows.add(start, dict(row))
        start = reader.line_num + 1
    if not rows.rows:
        raise DataError(f"{path}: no rows under the header")
    return rows.result()


def _bad_bytes(value) -> list[int]:
    """The undecodable bytes (as ``surrogateescape`` kept them) in a CSV field or list of fields."""
    values = value if isinstance(value, list) else [value]
    return [ord(ch) - 0xDC00 for v in values if isinstance(v, str) for ch in v if 0xDC80 <= ord(ch) <= 0xDCFF]


def read_rows(path: str | Path, *, require_answer: bool = True) -> ReadResult:
    """Good rows and every bad row of a ``.jsonl``/``.json``/``.ndjson`` or ``.csv`` file (by extension).

    Raises:
        DataError: unknown extension, missing file, no rows at all, or not one good row (every bad
            row is named).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        result = read_csv_rows(path, require_answer=require_answer)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        result = read_jsonl_rows(path, require_answer=require_answer)
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl or .csv")
    if not result.examples:
        raise DataError(_bad_rows_message(path, result.rejected, "not one good row"))
    return result


def _bad_rows_message(path: str | Path, rejected: Sequence[RejectedRow], what: str) -> str:
    """One bad row: ``file:line: reason`` as ever; several: a count, then one line per row."""
    if len(rejected) == 1:
        return str(rejected[0])
    return f"{path}: {len(rejected)} bad rows, {what}; fix or remove them:\n" + "\n".join(f"  {r}" for r in rejected)


def strict(result: ReadResult, path: str | Path) -> list[Example]:
    """The examples of ``result`` if no row was bad.

    Raises:
        DataError: naming every bad row (``file:line (id): reason``); nothing is returned.
    """
    if result.rejected:
        raise DataError(_bad_rows_message(path, result.rejected, "so nothing was read"))
    return result.examples


def read_jsonl(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """Read a JSONL file of prompt/answer rows, all or nothing. Blank lines are skipped.

    Raises:
        DataError: naming ``file:line`` of EVERY bad row (non-UTF-8 bytes, invalid JSON, missing
            fields, duplicate ids); see :func:`read_jsonl_rows` to keep the good rows instead.
    """
    return strict(read_jsonl_rows(path, require_answer=require_answer), path)


def read_csv(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """Read a CSV file with a header containing ``prompt`` and (unless unlabeled) ``answer``, all or nothing.

    Raises:
        DataError: naming ``file:line`` of every bad row (see :func:`read_csv_rows`).
    """
    return strict(read_csv_rows(path, require_answer=require_answer), path)


def read_examples(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """Read ``.jsonl``/``.json`` lines or ``.csv`` by extension, all or nothing (every bad row named)."""
    return strict(read_rows(path, require_answer=require_answer), path)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows as UTF-8 JSONL (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def example_to_row(ex: Example) -> dict:
    row = {"id": ex.id, "prompt": ex.prompt}
    if ex.answer is not None:
        row["answer"] = ex.answer
    row.update(ex.meta)
    return row


def require_labeled(examples: Sequence[Example], needed: int, what: str) -> None:
    """Raise a DataError if fewer than ``needed`` examples carry an answer."""
    have = sum(1 for e in examples if e.answer is not None and e.answer.strip())
    if have < needed:
        raise DataError(f"{what}: {have} labeled rows, at least {needed} needed; label {needed - have} more")
