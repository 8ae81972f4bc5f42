"""The annotation queue's priority scheme: which item an annotator sees next (one owner).

Every task carries a number (higher = labeled first). The low-confidence batch sits on top, the
eval split under it, and each batch the loop requests above everything requested before it but
below both, so "sort by priority" is always the order dataeff wants. Items nobody requested yet
wait below every request, at negative priorities in the order the loop would request them
(:func:`waiting_priorities`): a team that labels past the requests, or on after the loop said stop,
gives the loop's own next random batches, never the import order (which may be sorted by class).
Items imported later sit at :data:`UNREQUESTED` until they are requested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from dataeff.iteration import next_batch

UNREQUESTED = 0
"""Priority of an item nobody asked for yet (set on import)."""
LOWCONF_PRIORITY = 1_000_000
"""Base of the low-confidence batch: labeled first (CoS-Low needs all of it)."""
EVAL_PRIORITY = 500_000
"""Base of the held-out eval split: labeled second (every fine-tune is scored on it)."""


def batch_base(n_labeled: int, n_wanted: int) -> int:
    """Base of a batch the loop requests after ``n_labeled`` labels: above every earlier batch (each
    earlier batch had fewer labels before it), below the eval split for any realistic project."""
    return 1000 + 10 * n_labeled + n_wanted


def priorities(ids: Sequence[str], base: float) -> Mapping[str, float]:
    """``{id: base + n - k}`` for item ``k`` of ``n``: the first id is labeled first."""
    n = len(ids)
    return {str(item): base + n - k for k, item in enumerate(ids)}


def waiting_priorities(
    current: Mapping[str, float | None], seed: int = 0, *, reserved: Iterable[str] = (), last: Iterable[str] = ()
) -> dict[str, float]:
    """Priorities of the items nobody requested: ``-1, -2, ...`` in the order the loop requests pool
    items (:func:`dataeff.iteration.next_batch` with the same ``seed``), the ``last`` ones (e.g. too long
    for the model) at the bottom; all below :data:`UNREQUESTED`, so :func:`requested_order` ignores them.

    Args:
        current: ``{id: priority}`` of every item now (``None``: never set). An item above
            :data:`UNREQUESTED` was requested and keeps its place (it is left out of the result).
        seed: the loop's request seed (``ProjectConfig.seed``).
        reserved: items with a place of their own (the low-confidence batch, the eval split): left out.
        last: items to put below all others.
    """
    skip = set(map(str, reserved))
    waiting = [str(i) for i, p in current.items() if str(i) not in skip and float(p or UNREQUESTED) <= UNREQUESTED]
    bottom = set(map(str, last))
    head = [i for i in waiting if i not in bottom]
    tail = [i for i in waiting if i in bottom]
    order = next_batch(head, len(head), seed=seed) + next_batch(tail, len(tail), seed=seed)
    return {item: -float(k + 1) for k, item in enumerate(order)}


def requested_order(priority_of: Mapping[str, float]) -> list[str]:
    """Ids with a priority above :data:`UNREQUESTED`, in the order annotators label them."""
    return [i for i, p in sorted(priority_of.items(), key=lambda kv: -kv[1]) if p > UNREQUESTED]


def queue_order(items: Mapping[str, tuple[float, int]]) -> list[str]:
    """Every id in the order annotators meet it: priority descending, then Label Studio's task id.

    Args:
        items: ``{id: (priority, task id)}``; a missing priority counts as :data:`UNREQUESTED`.
    """
    return sorted(items, key=lambda i: (-float(items[i][0] or UNREQUESTED), int(items[i][1])))
