"""Finished results that are not logged to MLflow yet, kept on disk until they are.

A fine-tune takes minutes; an MLflow outage must not throw it away. The loop writes each result
here the moment it is measured, logs it (with retries), and deletes it once MLflow has it. A later
iteration that finds a kept result for the same labels and budget logs it instead of training again.

Layout: ``$DATAEFF_HOME/pending/<project>/<kind>-<label_hash>-<budget>.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dataeff.project import dataeff_home


def pending_path(project: str, kind: str, label_hash: str, budget: int, home: Path | None = None) -> Path:
    return (home or dataeff_home()) / "pending" / project / f"{kind}-{label_hash}-{int(budget)}.json"


def keep(path: Path, result: dict) -> Path:
    """Write ``result`` atomically to ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def kept(path: Path) -> dict | None:
    """The kept result at ``path``, or ``None`` (missing or unreadable: measure again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def done(path: Path) -> None:
    """Forget a result that is logged now."""
    path.unlink(missing_ok=True)
