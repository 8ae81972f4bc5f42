"""Examples and task descriptions, and loaders for JSONL/CSV files of prompt/answer rows.

A row is ``{"prompt": str, "answer": str}`` plus optional ``id`` and any extra fields (kept in
``Example.meta``). An unlabeled pool may omit ``answer`` (``require_answer=False``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

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


def _row_to_example(row: dict, where: str, index: int, require_answer: bool) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'prompt' and 'answer', got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: missing or empty 'prompt' field; every row needs a non-empty prompt string")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    if require_answer and (answer is None or not answer.strip()):
        raise DataError(f"{where}: missing or empty 'answer' field; label this row or remove it")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "answer", "id")}
    ex_id = row.get("id")
    return Example(prompt=prompt, answer=answer, id=str(ex_id) if ex_id is not None else str(index), meta=meta)


def read_jsonl(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """Read a JSONL file of prompt/answer rows. Blank lines are skipped.

    Raises:
        DataError: naming ``file:line`` for non-UTF-8 bytes, invalid JSON or missing fields.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    examples: list[Example] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg}); each line must be one JSON object") from None
            examples.append(_row_to_example(row, where, len(examples), require_answer))
    if not examples:
        raise DataError(f"{path}: no rows; expected one JSON object per line with 'prompt' and 'answer'")
    return examples


def read_csv(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """Read a CSV file with a header containing ``prompt`` and (unless unlabeled) ``answer``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8") from None
    # newline="" keeps line breaks inside quoted fields; line_num counts physical lines of multi-line rows.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise DataError(f"{path}: the header must name a 'prompt' column (found {reader.fieldnames})")
    examples = []
    start = reader.line_num + 1
    for row in reader:
        examples.append(_row_to_example(dict(row), f"{path}:{start}", len(examples), require_answer))
        start = reader.line_num + 1
    if not examples:
        raise DataError(f"{path}: no rows under the header")
    return examples


def read_examples(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """Read ``.jsonl``/``.json`` lines or ``.csv`` by extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv(path, require_answer=require_answer)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return read_jsonl(path, require_answer=require_answer)
    raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl or .csv")


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
