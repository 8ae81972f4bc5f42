"""Reconcile Label Studio's labeled tasks with the last pull: pure, no HTTP (tested in milliseconds).

:func:`reconcile` takes the tasks as Label Studio lists them (SDK objects or plain dicts) and the
cursor of the previous pull, and decides which annotation counts for each item, what changed,
what was deleted, and what could not be read. :meth:`integrations.label_studio.LabelStudioClient.pull_labeled`
lists the tasks and calls it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dataeff.data import Example
from dataeff.errors import DataError

PROMPT_FIELD = "prompt"
"""Task data field holding the text shown to annotators (and the model's prompt)."""
ID_FIELD = "dataeff_id"
"""Task data field holding dataeff's stable item id (absent on tasks made by hand)."""


@dataclass(frozen=True)
class PullError:
    """A task/annotation that could not be read; the rest of the pull went on.

    Attributes:
        dataeff_id: the item's ``dataeff_id``.
        task_id: Label Studio task id.
        annotation_id: the offending annotation (``None`` when the task itself is bad).
        reason: what is wrong and what to do.
    """

    dataeff_id: str
    task_id: int
    annotation_id: int | None
    reason: str


@dataclass(frozen=True)
class Cursor:
    """What a pull has seen; JSON-serialisable so the caller can persist it (e.g. in MLflow).

    Attributes:
        updated_at: the latest ``updated_at`` (ISO 8601) of the counted annotations, or ``None``.
        seen: ``dataeff_id -> (annotation_id, updated_at)`` of the annotation counted for every
            labeled item at that pull.

    Never mutated by this module: each pull returns a new cursor.
    """

    updated_at: str | None = None
    seen: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"version": 1, "updated_at": self.updated_at, "seen": {k: list(v) for k, v in self.seen.items()}}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, payload: Mapping) -> Cursor:
        try:
            seen = {str(k): (int(v[0]), str(v[1])) for k, v in payload.get("seen", {}).items()}
            return cls(updated_at=payload.get("updated_at"), seen=seen)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DataError(
                f"malformed Label Studio cursor ({exc}); pass since=None to pull everything again"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"malformed Label Studio cursor JSON ({exc.msg}); pass since=None to pull everything again"
            ) from None


@dataclass(frozen=True)
class PullResult:
    """Outcome of :meth:`LabelStudioClient.pull_labeled`.

    Attributes:
        examples: every item labeled now (the current truth, not only the changes), one
            :class:`Example` per item with ``answer`` from the counted annotation and ``meta``
            holding ``task_id``, ``annotation_id``, ``updated_at``, ``dataeff_id``, ``annotator``.
        changed_ids: items new or edited since the given cursor (all of them when ``since=None``).
        deleted_ids: items labeled at the cursor that are not labeled any more (annotation
            deleted, cancelled, or now malformed).
        errors: malformed tasks/annotations, each named, skipped.
        cursor: the new cursor to persist.
        unmanaged_task_ids: annotated tasks that carry no ``dataeff_id`` (made by hand in Label
            Studio, not imported by dataeff). Skipped, never counted: dataeff cannot tell whether
            they are pool, eval or duplicate items. Import such items with ``dataeff project create``.
    """

    examples: tuple[Example, ...]
    changed_ids: tuple[str, ...]
    deleted_ids: tuple[str, ...]
    errors: tuple[PullError, ...]
    cursor: Cursor
    unmanaged_task_ids: tuple[int, ...] = ()

    @property
    def has_changes(self) -> bool:
        """Whether anything was added, edited or deleted since the cursor."""
        return bool(self.changed_ids or self.deleted_ids)


def _ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


# ----------------------------------------------------------------------------- the client


def reconcile(
    tasks: Iterable[Any],
    answer_of: Callable[[Any], str],
    since: Cursor | None = None,
    annotator_of: Callable[[Any], str] = str,
) -> PullResult:
    """Every labeled item now, reconciled with ``since``.

    For each task the counted annotation is chosen among the non-cancelled, well-formed ones: a
    ``ground_truth`` one first, else the latest ``updated_at`` (ties: higher id). Malformed
    annotations (``answer_of`` raises ``ValueError``) and tasks without a prompt go to ``errors``;
    tasks without a ``dataeff_id`` (made by hand) to ``unmanaged_task_ids``; an id on two tasks
    keeps the first.

    Args:
        tasks: annotated tasks with ``id``, ``data`` and ``annotations`` (each with ``id``,
            ``result``, ``was_cancelled``, ``ground_truth``, ``updated_at``/``created_at``,
            ``completed_by``); objects or dicts.
        answer_of: the answer text of an annotation's ``result`` (raises ``ValueError`` when malformed).
        since: the cursor of the previous pull (``None``: first pull, everything is new).
        annotator_of: a readable name for an annotation's ``completed_by``.

    Returns:
        A :class:`PullResult` with a NEW cursor; ``since`` is never modified.
    """
    examples: list[Example] = []
    errors: list[PullError] = []
    seen: dict[str, tuple[int, str]] = {}
    unmanaged: list[int] = []
    for task in tasks:
        data = _field(task, "data") or {}
        task_id = int(_field(task, "id"))
        if ID_FIELD not in data:
            unmanaged.append(task_id)
            continue
        item_id = str(data[ID_FIELD])
        prompt = data.get(PROMPT_FIELD)
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append(
                PullError(
                    item_id, task_id, None, f"task {task_id} has no {PROMPT_FIELD!r} text; fix or delete the task"
                )
            )
            continue
        best: tuple | None = None
        for ann in _field(task, "annotations") or []:
            if _field(ann, "was_cancelled"):
                continue
            ann_id = _field(ann, "id")
            try:
                answer = answer_of(_field(ann, "result"))
            except ValueError as exc:
                errors.append(
                    PullError(
                        item_id,
                        task_id,
                        ann_id,
                        f"annotation {ann_id} of task {task_id}: {exc}; fix it in Label Studio",
                    )
                )
                continue
            updated = _ts(_field(ann, "updated_at") or _field(ann, "created_at"))
            rank = (bool(_field(ann, "ground_truth")), updated, ann_id or 0)
            if best is None or rank > best[0]:
                best = (rank, ann, answer)
        if best is None:
            continue
        _, ann, answer = best
        if item_id in seen:
            errors.append(
                PullError(
                    item_id,
                    task_id,
                    _field(ann, "id"),
                    f"dataeff_id {item_id!r} is on several tasks; kept the first",
                )
            )
            continue
        updated_iso = _iso(_field(ann, "updated_at") or _field(ann, "created_at"))
        seen[item_id] = (int(_field(ann, "id")), updated_iso)
        examples.append(
            Example(
                prompt=prompt,
                answer=answer,
                id=item_id,
                meta={
                    "task_id": task_id,
                    "annotation_id": int(_field(ann, "id")),
                    "updated_at": updated_iso,
                    "dataeff_id": item_id,
                    "annotator": annotator_of(_field(ann, "completed_by")),
                    "ground_truth": bool(_field(ann, "ground_truth")),
                },
            )
        )
    before = dict(since.seen) if since is not None else {}
    changed = tuple(i for i, v in seen.items() if before.get(i) != v)
    deleted = tuple(sorted(i for i in before if i not in seen))
    stamps = [v[1] for v in seen.values()] + ([since.updated_at] if since is not None and since.updated_at else [])
    latest = max(stamps, key=_ts, default=None)
    return PullResult(
        examples=tuple(examples),
        changed_ids=changed,
        deleted_ids=deleted,
        errors=tuple(errors),
        cursor=Cursor(updated_at=latest, seen=seen),
        unmanaged_task_ids=tuple(sorted(unmanaged)),
    )
