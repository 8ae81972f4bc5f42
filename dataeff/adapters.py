"""Saved LoRA adapters of a project: where they live, what they were measured at, and using one for inference.

The loop saves the adapter of each fine-tune (peft ``save_pretrained`` folder) with a small record
of what it is (:class:`AdapterInfo`, ``dataeff-adapter.json`` inside the folder): the budget, the
hash of the labels it was trained and evaluated on, and its measured score on the eval split.
Only the newest adapter of the largest budget is kept (:func:`prune_adapters`): one adapter of
SmolLM2-135M at r=8 on all seven projections holds 2.4 M fp32
parameters, about 10 MB.

Layout: ``<home>/projects/<project>/adapters/<train_hash>-b<budget>/`` (``home`` =
``$DATAEFF_HOME`` or ``./.dataeff``, :func:`dataeff.project.dataeff_home`).

:func:`attached_adapter` puts a saved adapter into a loaded base model for inference and takes
it out afterwards, leaving every base weight bit-identical and every ``requires_grad`` flag as it
was. Model use is serialised per model (:func:`model_lock`) so that a server answering requests
and a loop iteration in one process never see each other's adapters.

Pure: no service is called.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dataeff.errors import DataError
from dataeff.finetune import FinetuneResult, remove_adapters
from dataeff.models import LoadedModel

INFO_FILE = "dataeff-adapter.json"
"""The :class:`AdapterInfo` record inside an adapter folder (written last: its presence marks a complete adapter)."""
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class AdapterInfo:
    """What a saved adapter is and how well it did.

    Attributes:
        model: the model source the adapter was trained on (``ProjectConfig.model``).
        budget: training labels it was fine-tuned on (>= 1).
        train_hash: hash of the labels it was trained and evaluated on (the fine-tune's MLflow key).
        score: its measured agreement with the annotators on the eval split, in [0, 1] (the task's metric).
        n_eval: eval items the score was measured on.
        metric: the task's metric (``"exact_match"``, ``"f1"``).
        chat_template: prompts went through the tokenizer's chat template (in training and scoring).
        max_new_tokens: generation limit of an answer when it was scored.
        stop_at_newline: answers ended at their first line break when it was scored.
        saved_at: Unix time (seconds) the adapter was saved.
    """

    model: str
    budget: int
    train_hash: str
    score: float
    n_eval: int = 0
    metric: str = "exact_match"
    chat_template: bool = False
    max_new_tokens: int = 8
    stop_at_newline: bool = True
    saved_at: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdapterInfo:
        """The inverse of :meth:`as_dict`; unknown keys (a newer dataeff) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def adapters_root(project: str, home: Path | None = None) -> Path:
    """Folder of a project's saved adapters: ``<home>/projects/<project>/adapters``."""
    from dataeff.project import dataeff_home

    return (home or dataeff_home()) / "projects" / project / "adapters"


def adapter_name(train_hash: str, budget: int) -> str:
    """Folder name of the adapter trained on ``budget`` labels of the label set ``train_hash``."""
    return f"{train_hash}-b{int(budget)}"


def base_model_version(model: str) -> str:
    """Label Studio ``model_version`` of the base model's pre-annotations: ``dataeff-<model>``."""
    return f"dataeff-{model}"


def adapter_model_version(info: AdapterInfo) -> str:
    """Label Studio ``model_version`` of an adapter's pre-annotations: ``dataeff-<model>-lora-b<budget>-<hash8>``
    (one per adapter: a new fine-tune, even at the same budget on edited labels, gets a new one)."""
    return f"{base_model_version(info.model)}-lora-b{int(info.budget)}-{info.train_hash[:8]}"


def budget_of_version(version: str, model: str) -> int | None:
    """The training budget behind a model version of ``model``'s pre-annotations: 0 for the base model
    (:func:`base_model_version`), ``b`` for an adapter's (:func:`adapter_model_version`), ``None``
    for any other version (another model, a withdrawal marker, empty).

    Examples:
        >>> budget_of_version("dataeff-smollm2-lora-b100-0a1b2c3d", "smollm2")
        100
        >>> budget_of_version("dataeff-smollm2", "smollm2")
        0
    """
    base = base_model_version(model)
    if version == base:
        return 0
    rest = version[len(base) :] if version.startswith(base + "-lora-b") else ""
    budget, _, tag = rest[len("-lora-b") :].partition("-")
    return int(budget) if budget.isdigit() and len(tag) == 8 else None


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a loadable adapter (config, weights and the :data:`INFO_FILE` record)."""
    return (
        folder.is_dir()
        and (folder / "adapter_config.json").is_file()
        and any((folder / w).is_file() for w in _WEIGHTS)
        and (folder / INFO_FILE).is_file()
    )


def read_info(folder: str | Path) -> AdapterInfo | None:
    """The :class:`AdapterInfo` of a complete adapter folder, or ``None`` (missing, partial or unreadable)."""
    folder = Path(folder)
    if not is_complete(folder):
        return None
    try:
        return AdapterInfo.from_dict(json.loads((folder / INFO_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def staging_dir(root: Path, name: str) -> Path:
    """A fresh temporary folder beside ``root/name`` to save an adapter into before :func:`commit_adapter`."""
    path = root / f"{name}{_TMP_MARK}{os.getpid()}-{time.monotonic_ns()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def staging(root: str | Path, name: str, enabled: bool = True) -> Iterator[Path | None]:
    """A fresh staging folder (:func:`staging_dir`) to save an adapter into, deleted on exit unless
    :func:`commit_adapter` moved it into place; yields ``None`` when not ``enabled`` (e.g. budget 0)."""
    if not enabled:
        yield None
        return
    path = staging_dir(Path(root), name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def commit_adapter(staged: Path, final: Path, info: AdapterInfo) -> Path:
    """Write ``info`` into the saved adapter ``staged`` and move it to ``final`` (replacing one there).

    The folder appears under its final name only complete, so a reader never loads half an
    adapter. Returns ``final``.

    Raises:
        DataError: ``staged`` holds no saved adapter (no ``adapter_config.json``).
    """
    if not (staged / "adapter_config.json").is_file():
        raise DataError(f"{staged}: no saved adapter (adapter_config.json missing); save it with save_pretrained first")
    (staged / INFO_FILE).write_text(json.dumps(info.as_dict(), indent=1) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    staged.replace(final)
    return final


def keep_adapter(staged: str | Path, model: str, train_hash: str, result: FinetuneResult, metric: str) -> str | None:
    """Record a fine-tune's saved adapter and keep only the best adapter of the folder.

    ``staged`` (where :func:`dataeff.finetune.run_finetune` saved the adapter) is moved to
    ``<staged's folder>/<train_hash>-b<budget>`` with an :class:`AdapterInfo` from ``result`` (its
    score, and the prompt format and answer length it was scored with); then every other adapter
    of the folder but the best (:func:`latest_adapter`) is deleted.

    Args:
        staged: the ``save_pretrained`` folder of the fine-tune.
        model: the model source it was trained on.
        train_hash: hash of its training and eval labels.
        result: the fine-tune's result (budget, score, n_eval, settings).
        metric: the task's metric.

    Returns:
        The adapter's folder, or ``None`` when a better adapter (a larger budget) is kept instead.
    """
    staged = Path(staged)
    settings = result.settings
    info = AdapterInfo(
        model=model,
        budget=int(result.budget),
        train_hash=train_hash,
        score=float(result.score),
        n_eval=int(result.n_eval),
        metric=metric,
        chat_template=bool(settings.get("chat_template", False)),
        max_new_tokens=int(settings.get("max_new_tokens", 8)),
        stop_at_newline=bool(settings.get("stop_at_newline", True)),
        saved_at=time.time(),
    )
    root = staged.parent
    final = commit_adapter(staged, root / adapter_name(train_hash, result.budget), info)
    best = latest_adapter(root, model)
    prune_adapters(root, keep=best[0] if best else None)
    return str(final) if is_complete(final) else None


def list_adapters(root: str | Path, model: str | None = None) -> list[tuple[Path, AdapterInfo]]:
    """Complete adapters under ``root`` (of ``model`` when given), best first.

    Best = largest budget, then most recently saved.

    Returns:
        ``[(folder, info), ...]``; empty when ``root`` does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if _TMP_MARK in folder.name:
            continue
        info = read_info(folder)
        if info is not None and (model is None or info.model == model):
            found.append((folder, info))
    return sorted(found, key=lambda fi: (fi[1].budget, fi[1].saved_at, fi[0].name), reverse=True)


def latest_adapter(root: str | Path, model: str | None = None) -> tuple[Path, AdapterInfo] | None:
    """The adapter to predict with: the largest budget (newest for a tie), or ``None`` when there is none."""
    found = list_adapters(root, model)
    return found[0] if found else None


def prune_adapters(root: str | Path, keep: str | Path | None, stale_seconds: float = 3600.0) -> list[Path]:
    """Delete every adapter folder under ``root`` but ``keep``; returns the deleted folders.

    Staging folders (``<name>.tmp-...``) are deleted too once older than ``stale_seconds`` (a
    crashed save); younger ones may belong to a fine-tune still running and are left alone.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    keep_path = Path(keep).resolve() if keep is not None else None
    removed = []
    now = time.time()
    for folder in root.iterdir():
        if not folder.is_dir() or (keep_path is not None and folder.resolve() == keep_path):
            continue
        if _TMP_MARK in folder.name and now - folder.stat().st_mtime < stale_seconds:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return sorted(removed)


_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(loaded: LoadedModel | Any) -> threading.RLock:
    """The re-entrant lock of one loaded model (a :class:`LoadedModel` or its ``model``).

    Hold it while the model runs with or without an adapter attached: an adapter is injected into
    the shared base model itself, so a second thread using the model meanwhile would see it.
    """
    model = loaded.model if isinstance(loaded, LoadedModel) else loaded
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def attached_adapter(loaded: LoadedModel, adapter_dir: str | Path) -> Iterator[Any]:
    """Attach the saved LoRA adapter ``adapter_dir`` to ``loaded.model`` for inference; detach it on exit.

    Inside the block the yielded peft model (eval mode, adapter weights frozen) answers with the
    adapter; ``loaded.model`` is the same object throughout. On exit, even on error, the adapter
    layers are taken out without merging (:func:`dataeff.finetune.remove_adapters`), so every
    base weight is bit-identical to before and every ``requires_grad`` flag restored. The model's
    lock (:func:`model_lock`) is held for the whole block.

    Args:
        loaded: the base model and tokenizer the adapter was trained on.
        adapter_dir: a peft ``save_pretrained`` folder (``adapter_config.json`` + weights).

    Yields:
        The peft-wrapped model; pass it with ``loaded.tokenizer`` to
        :func:`dataeff.confidence.score_confidence` or :func:`dataeff.generation.generate_answers`.

    Raises:
        DataError: no adapter in ``adapter_dir``, or its weights do not fit the model (missing or
            unexpected LoRA tensors); the base model is left as it was.

    Examples:
        >>> with attached_adapter(loaded, "adapters/abc-b100") as model:  # doctest: +SKIP
        ...     scores = score_confidence(model, loaded.tokenizer, examples)
    """
    import torch
    from peft import LoraConfig, get_peft_model

    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file() or not any((folder / w).is_file() for w in _WEIGHTS):
        raise DataError(f"{folder}: no saved LoRA adapter (adapter_config.json and adapter weights expected)")
    config = LoraConfig.from_pretrained(str(folder))
    config.inference_mode = True
    with model_lock(loaded):
        flags = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
        with torch.random.fork_rng(
            devices=[]
        ):  # fresh LoRA layers draw random numbers; callers' seeds stay as they were
            peft_model = get_peft_model(loaded.model, config)
        try:
            result = peft_model.load_adapter(str(folder), adapter_name="default", is_trainable=False)
            unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
            if unexpected or missing:
                raise DataError(
                    f"{folder}: the adapter does not fit this model ({len(missing)} LoRA tensors missing, "
                    f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}); was it trained on another model?"
                )
            peft_model.eval()
            yield peft_model
        finally:
            remove_adapters(peft_model, flags)


__all__ = [
    "INFO_FILE",
    "AdapterInfo",
    "adapter_model_version",
    "adapter_name",
    "adapters_root",
    "attached_adapter",
    "base_model_version",
    "budget_of_version",
    "commit_adapter",
    "is_complete",
    "keep_adapter",
    "latest_adapter",
    "list_adapters",
    "model_lock",
    "prune_adapters",
    "read_info",
    "staging",
    "staging_dir",
]
