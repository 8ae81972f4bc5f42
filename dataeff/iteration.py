"""Pure bookkeeping of one loop iteration: which labeled items play which role, which budgets are
due, which unlabeled items to request next. No I/O; the flows call these.

Roles (drawn once at bootstrap and kept in the project's MLflow ``bootstrap`` run, ``roles.json``):

- ``lowconf``: the low-confidence batch annotated for CoS-Low (also usable for training);
- ``eval``: the held-out evaluation split (never trained on);
- everything else is the pool: training items, labeled in the order the loop requests them;
- ``too_long``: pool items beyond the project's token bounds, never requested.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dataeff.data import Example
from dataeff.errors import DataError

ROLE_LOWCONF = "lowconf"
ROLE_EVAL = "eval"
ROLE_TOO_LONG = "too_long"
"""Pool items beyond the project's token bounds: never scored, never requested (bootstrap reports them)."""


def stable_key(seed: int, item_id: str) -> str:
    """Seeded hash of an item id: an order that does not change as items are added."""
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()


def label_set_hash(examples: Iterable[Any]) -> str:
    """sha256 hex digest of a labeled set, independent of order.

    Args:
        examples: ``dataeff.data.Example`` objects, ``{"id", "answer"}`` mappings or ``(id, answer)``
            pairs. Every item needs a non-empty id and an answer.

    Returns:
        64 hex characters: sha256 over the JSON of the sorted ``(id, answer)`` pairs.

    Raises:
        DataError: naming the item that has no id or no answer.
    """
    pairs = []
    for i, ex in enumerate(examples):
        if isinstance(ex, Mapping):
            ex_id, answer = ex.get("id"), ex.get("answer")
        elif isinstance(ex, (tuple, list)) and len(ex) == 2:
            ex_id, answer = ex
        else:
            ex_id, answer = getattr(ex, "id", None), getattr(ex, "answer", None)
        if ex_id is None or str(ex_id) == "":
            raise DataError(f"label set item {i}: no id; every labeled example needs a stable id to be hashed")
        if answer is None:
            raise DataError(f"label set item {i} (id {ex_id!r}): no answer; hash only labeled examples")
        pairs.append((str(ex_id), str(answer)))
    pairs.sort()
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LabeledSets:
    """The labeled items of a project split by role.

    Attributes:
        lowconf: labeled items of the low-confidence batch.
        eval: labeled held-out items.
        train: every labeled non-eval item (low-confidence ones included), sorted by id. The
            training set of budget ``b`` is :func:`dataeff.finetune.nested_subset` of it (nested
            across budgets and stable as more labels arrive).
    """

    lowconf: list[Example]
    eval: list[Example]
    train: list[Example]


def partition(labeled: Sequence[Example], roles: Mapping[str, str]) -> LabeledSets:
    """Split labeled examples by role (``roles`` maps example id -> role; unknown ids are ``pool``)."""
    by_id = sorted(labeled, key=lambda e: str(e.id))
    return LabeledSets(
        lowconf=[e for e in by_id if roles.get(str(e.id)) == ROLE_LOWCONF],
        eval=[e for e in by_id if roles.get(str(e.id)) == ROLE_EVAL],
        train=[e for e in by_id if roles.get(str(e.id)) != ROLE_EVAL],
    )


def budgets_due(n_train: int, grid: Sequence[int], done: Iterable[int], eval_ready: bool) -> list[int]:
    """Grid budgets that the labeled count has reached and that have no fine-tune yet.

    Budget 0 (zero-shot) needs only the evaluation split. Nothing is due before the evaluation
    split is complete (``eval_ready``), since every score is measured on it.
    """
    if not eval_ready:
        return []
    done = set(done)
    return [b for b in sorted(grid) if b <= n_train and b not in done]


def next_batch(unlabeled_ids: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """The next ``n`` pool items to request: a seeded random order that is stable across calls."""
    ordered = sorted((str(i) for i in unlabeled_ids), key=lambda i: stable_key(seed, i))
    return ordered[: max(0, int(n))]


def choose_eval_split(ids: Iterable[str], size: int, exclude: Iterable[str] = (), seed: int = 0) -> list[str]:
    """Held-out evaluation ids: ``size`` items in seeded order, never from ``exclude`` (e.g. the low-confidence batch)."""
    excluded = set(map(str, exclude))
    candidates = [i for i in map(str, ids) if i not in excluded]
    return sorted(candidates, key=lambda i: stable_key(seed + 1_000_003, i))[:size]
