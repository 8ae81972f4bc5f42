"""The annotation queue's priority scheme: which item an annotator sees next (one owner).

Every task carries a number (higher = labeled first). The low-confidence batch sits on top, the
eval split under it, and each batch the loop requests above everything requested before it but
below both, so "sort by priority" is always the order dataeff wants. Unrequested items stay at
:data:`UNREQUESTED`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def requested_order(priority_of: Mapping[str, float]) -> list[str]:
    """Ids with a priority above :data:`UNREQUESTED`, in the order annotators label them."""
    return [i for i, p in sorted(priority_of.items(), key=lambda kv: -kv[1]) if p > UNREQUESTED]


def queue_order(items: Mapping[str, tuple[float, int]]) -> list[str]:
    """Every id in the order annotators meet it: priority descending, then Label Studio's task id.

    Args:
        items: ``{id: (priority, task id)}``; a missing priority counts as :data:`UNREQUESTED`.
    """
    return sorted(items, key=lambda i: (-float(items[i][0] or UNREQUESTED), int(items[i][1])))
