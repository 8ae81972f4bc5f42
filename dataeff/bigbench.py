"""Real tasks offline: BIG-bench ``task.json`` files from the bigbench 1.0.0 source archive.

The archive (358 MB, Apache-2.0) is fetched once with ``pip download`` (never ``pip install``:
that pulls TensorFlow) and single ``task.json`` members are extracted from it on demand and cached
under ``dataeff.models.cache_dir() / "bigbench"``.

A task becomes a :class:`~dataeff.data.TaskSpec` plus a list of :class:`~dataeff.data.Example`:

- multiple choice (``target_scores``): the answer is the option with the top score; the task's
  ``labels`` are the option set when every example offers the same small set;
- free form (``target``, a string or a list): the answer is the first target (or a per-task
  choice, e.g. the digits of ``object_counting``); all targets are kept as acceptable answers in
  ``meta["targets"]``. The metric is token F1 for the paper's F1 tasks, exact match otherwise.

Prompts come from a small registry of :class:`TaskFormat` (short prompts that list the options:
CPU-friendly) or, for other tasks, from BIG-bench's own prefixes.

Command line: ``dataeff data bigbench NAME --out DIR`` (``app.cli``) writes ``pool.jsonl`` and
``eval.jsonl``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataeff.data import Example, TaskSpec, example_to_row, write_jsonl
from dataeff.errors import DataError
from dataeff.models import cache_dir

ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
ARCHIVE_ENV = "DATAEFF_BIGBENCH_ARCHIVE"
MAX_LABELS = 20
"""A shared option set larger than this is not treated as a closed label set."""
F1_TASKS = frozenset({"qa_wikidata", "disfl_qa", "coqa", "squad_v2", "sciq"})
"""Tasks the paper scores with token F1; every other free-form task uses exact match."""

_MEMBER = re.compile(r"(?:^|/)benchmark_tasks/(.+)/task\.json$")
_NAME_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(/[A-Za-z0-9_][A-Za-z0-9_\-]*)*$")


# --------------------------------------------------------------------------------------------
# Archive and extraction
# --------------------------------------------------------------------------------------------
def bigbench_cache() -> Path:
    """Folder of the archive and extracted tasks: ``cache_dir() / "bigbench"``."""
    return cache_dir() / "bigbench"


def _archive_candidates() -> list[Path]:
    return [bigbench_cache() / ARCHIVE_NAME]


def fetch_bigbench_archive(*, download: bool = True) -> Path:
    """Path of the bigbench 1.0.0 source archive, downloading it once if needed.

    Looks, in order, at ``$DATAEFF_BIGBENCH_ARCHIVE`` and ``cache_dir()/bigbench/``; otherwise runs
    ``pip download --no-deps --no-binary :all: bigbench==1.0.0 -d cache_dir()/bigbench``
    (~1 minute, 358 MB).

    Args:
        download: when False, raise instead of downloading.

    Raises:
        DataError: the env var names a missing file, or the archive is absent and cannot be fetched.
    """
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise DataError(f"${ARCHIVE_ENV}={env}: no such file; point it at {ARCHIVE_NAME} or unset it")
        return path
    for path in _archive_candidates():
        if path.is_file():
            return path
    dest = bigbench_cache()
    if not download:
        raise DataError(f"BIG-bench archive not found in {dest}; run fetch_bigbench_archive() or set ${ARCHIVE_ENV}")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "bigbench==1.0.0",
        "-d",
        str(dest),
    ]
    return fetch_file(cmd, dest / ARCHIVE_NAME, f"download {ARCHIVE_NAME} by hand and set ${ARCHIVE_ENV} to its path")


def fetch_file(cmd: list[str], path: Path, by_hand: str, timeout: float = 600) -> Path:
    """Run a download command (``pip download``, ``npm pack``) that should leave ``path``; return ``path``.

    Raises:
        DataError: the command could not run, failed, or left no file; names the command, the last
            lines of its output, and ``by_hand`` (what to do instead).
    """
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not run `{' '.join(cmd)}` ({exc}); {by_hand}") from None
    if proc.returncode != 0 or not path.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DataError(f"could not fetch {path.name} with `{' '.join(cmd)}` ({tail}); {by_hand}")
    return path


def _index_file() -> Path:
    return bigbench_cache() / "task_index.txt"


def _task_path(name: str) -> Path:
    return bigbench_cache() / "tasks" / name / "task.json"


def _similar(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    close += [n for n in names if name.lower() in n.lower() and n not in close][: 5 - len(close)]
    return ", ".join(close) if close else "(none similar)"


def list_tasks() -> list[str]:
    """Names of every task (and subtask, as ``task/subtask``) with a ``task.json`` in the archive.

    The first call reads the whole archive (~10 s); the list is cached.
    """
    index = _index_file()
    if index.is_file():
        return index.read_text(encoding="utf-8").split()
    names = []
    with tarfile.open(fetch_bigbench_archive(), "r|gz") as tar:
        for member in tar:
            hit = _MEMBER.search(member.name)
            if hit and member.isfile():
                names.append(hit.group(1))
    _write_atomic(index, "\n".join(sorted(names)).encode("utf-8"))
    return sorted(names)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def extract_task_json(name: str) -> Path:
    """Extract ``*/benchmark_tasks/<name>/task.json`` from the archive once; return its cached path.

    Only that member is written (streamed out of the archive with :mod:`tarfile`; the scan stops at
    it). Subtasks are named ``task/subtask``.

    Raises:
        DataError: the name is malformed or no such task exists; the message lists similar names.
    """
    if not _NAME_OK.match(name or ""):
        raise DataError(f"BIG-bench task name {name!r} is malformed; use a folder name such as 'sports_understanding'")
    out = _task_path(name)
    if out.is_file():
        return out
    index = _index_file()
    if index.is_file():
        known = index.read_text(encoding="utf-8").split()
        if name not in known:
            raise DataError(f"no BIG-bench task {name!r} in {ARCHIVE_NAME}; similar names: {_similar(name, known)}")
    seen = []
    with tarfile.open(fetch_bigbench_archive(), "r|gz") as tar:
        for member in tar:
            hit = _MEMBER.search(member.name)
            if not hit or not member.isfile():
                continue
            seen.append(hit.group(1))
            if hit.group(1) == name:
                data = tar.extractfile(member)  # a regular file (checked above): never None
                if data is None:
                    raise DataError(f"{ARCHIVE_NAME}: {member.name} is not a regular file")
                _write_atomic(out, data.read())
                return out
    _write_atomic(index, "\n".join(sorted(seen)).encode("utf-8"))
    raise DataError(f"no BIG-bench task {name!r} in {ARCHIVE_NAME}; similar names: {_similar(name, seen)}")


# --------------------------------------------------------------------------------------------
# Prompt formats
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskFormat:
    """How one task is prompted and how its answers are spelled.

    Attributes:
        name: the BIG-bench task name.
        template: the prompt, with ``{input}`` (the example's input, ``strip_prefix`` removed) and
            ``{options}`` (the labels joined by ", ").
        answer_map: renames raw BIG-bench answers (e.g. ``{"Yes": "yes"}``); unmapped ones are kept.
        strip_prefix: removed from the start of every input (e.g. ``"Utterance: "``).
        pick_target: for free-form tasks, chooses the answer from the list of targets (default: the first).
        instructions: one line for annotators.
    """

    name: str
    template: str
    answer_map: dict = field(default_factory=dict)
    strip_prefix: str = ""
    pick_target: Callable[[list[str]], str] | None = None
    instructions: str = ""

    def render(self, text: str, labels: Sequence[str] | None) -> str:
        if self.strip_prefix and text.startswith(self.strip_prefix):
            text = text[len(self.strip_prefix) :]
        return self.template.format(input=text.strip(), options=", ".join(labels or ()))

    def answer(self, raw: str) -> str:
        return self.answer_map.get(raw, raw)


def _first_number(targets: list[str]) -> str:
    return next((t for t in targets if t.strip().isdigit()), targets[0])


FORMATS: dict[str, TaskFormat] = {
    f.name: f
    for f in [
        TaskFormat(
            "sports_understanding",
            "Is this sentence plausible? {input}\nAnswer yes or no.\nAnswer:",
            answer_map={"plausible": "yes", "implausible": "no"},
            instructions="Is the sports sentence plausible? Answer yes or no.",
        ),
        TaskFormat(
            "intent_recognition",
            "Utterance: {input}\nChoose one intent: {options}.\nIntent:",
            strip_prefix="Utterance: ",
            instructions="Pick the intent of the utterance.",
        ),
        TaskFormat(
            "object_counting",
            "{input} Answer with a number.\nAnswer:",
            pick_target=_first_number,
            instructions="Count the objects asked about; answer with digits.",
        ),
        TaskFormat(
            "hyperbaton",
            "{input}\nAnswer a or b.\nAnswer:",
            instructions="Which sentence has the correct adjective order? Answer a or b.",
        ),
        TaskFormat(
            "formal_fallacies_syllogisms_negation",
            "{input}\nAnswer valid or invalid.\nAnswer:",
            instructions="Is the argument deductively valid? Answer valid or invalid.",
        ),
        TaskFormat(
            "strategyqa",
            "{input}\nAnswer yes or no.\nAnswer:",
            answer_map={"Yes": "yes", "No": "no"},
            instructions="Answer the question yes or no.",
        ),
    ]
}


def _default_format(name: str, spec: dict, choice: bool) -> TaskFormat:
    """BIG-bench's own prefixes (task_prefix, example_input_prefix, example_output_prefix), with its
    defaults ``"\\nQ: "``/``"\\nA: "``; the options of a choice task are listed unless the task sets
    append_choices_to_input to false."""
    esc = lambda s: str(s).replace("{", "{{").replace("}", "}}")  # noqa: E731
    template = esc(spec.get("task_prefix", "")) + esc(spec.get("example_input_prefix", "\nQ: ")) + "{input}"
    if choice and spec.get("append_choices_to_input", True):
        template += "\nOptions: {options}."
    template += esc(spec.get("example_output_prefix", "\nA: ")).rstrip()
    return TaskFormat(name, template.lstrip("\n"), instructions=str(spec.get("description", ""))[:200])


def task_format(name: str, spec: dict | None = None, choice: bool = False) -> TaskFormat:
    """The registered format of ``name`` or the generic BIG-bench default built from ``spec``
    (``choice``: the task is multiple choice, so its options are listed in the prompt)."""
    if name in FORMATS:
        return FORMATS[name]
    return _default_format(name, spec or {}, choice)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _top_choice(scores: dict, where: str) -> str:
    if not scores:
        raise DataError(f"{where}: empty 'target_scores'")
    return max(scores, key=lambda k: scores[k])  # first of tied maxima, as json order


def load_bigbench_task(name: str, *, max_examples: int | None = None, seed: int = 0) -> tuple[TaskSpec, list[Example]]:
    """Load a BIG-bench task as a TaskSpec and prompt/answer examples.

    Args:
        name: task folder name (``task/subtask`` for a subtask).
        max_examples: keep a seeded random subset of this size (all when None or larger).
        seed: seed of that subset.

    Returns:
        ``(task, examples)``; examples keep the file's order, with ids ``"<name>:<index>"`` (the
        index in the file, stable across subsets) and ``meta`` = ``{"task", "index", "targets"}``
        (``targets``: every acceptable answer, after the task's answer renaming), plus ``"choices"``
        for a choice task whose options differ between examples.

    Raises:
        DataError: unknown task (similar names listed), or an example with neither
            ``target_scores`` nor ``target``.
    """
    path = extract_task_json(name)
    spec = json.loads(path.read_text(encoding="utf-8"))
    raw = spec.get("examples") or []
    if not raw:
        raise DataError(f"{path}: no 'examples'")
    indices: np.ndarray = np.arange(len(raw))
    if max_examples is not None:
        if max_examples < 1:
            raise DataError(f"max_examples must be >= 1, got {max_examples}")
        if max_examples < len(raw):
            indices = np.sort(np.random.default_rng(seed).permutation(len(raw))[:max_examples])

    choice = all(isinstance(raw[i].get("target_scores"), dict) and raw[i]["target_scores"] for i in indices)
    fmt0 = FORMATS.get(name)
    mapper = fmt0.answer if fmt0 else (lambda s: s)
    labels = None
    if choice:
        option_sets = {tuple(mapper(k) for k in raw[i]["target_scores"]) for i in indices}
        if len({frozenset(s) for s in option_sets}) == 1:
            first = next(iter(option_sets))
            if len(first) <= MAX_LABELS:
                labels = tuple(first)
    fmt = task_format(name, spec, choice)

    examples = []
    for i in indices:
        row, where = raw[i], f"{path}: example {i}"
        text = row.get("input")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: missing 'input' text")
        if choice:
            options = [fmt.answer(k) for k in row["target_scores"]]
            answer = fmt.answer(_top_choice(row["target_scores"], where))
            targets = [answer]
            if not labels:  # per-example options: shuffled (BIG-bench often lists the answer first)
                options = [options[j] for j in np.random.default_rng([seed, int(i)]).permutation(len(options))]
            prompt = fmt.render(text, labels if labels else options)
        else:
            target = row.get("target")
            targets = [target] if isinstance(target, str) else [str(t) for t in (target or [])]
            targets = [fmt.answer(t) for t in targets if str(t).strip()]
            if not targets:
                raise DataError(
                    f"{where}: neither 'target_scores' nor a non-empty 'target'; this task cannot be loaded"
                )
            answer = fmt.pick_target(targets) if fmt.pick_target else targets[0]
            prompt = fmt.render(text, None)
        meta = {"task": name, "index": int(i), "targets": targets}
        if choice and not labels:
            meta["choices"] = options
        examples.append(Example(prompt=prompt, answer=answer, id=f"{name}:{int(i)}", meta=meta))
    metric = "exact_match" if choice or name not in F1_TASKS else "f1"
    task = TaskSpec(name=name, labels=labels, metric=metric, instructions=fmt.instructions)
    return task, examples


def split_examples(
    examples: Sequence[Example], eval_size: int | float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Deterministic split into an unlabeled/training pool and a held-out evaluation set.

    Args:
        examples: the task's examples.
        eval_size: number of evaluation examples (int >= 1) or a fraction in (0, 1).
        seed: seed of the permutation.

    Returns:
        ``(pool, eval)``, each in the input order; the same inputs always give the same split.

    Raises:
        DataError: eval_size leaves no pool or no evaluation example.
    """
    n = len(examples)
    k = int(round(eval_size * n)) if isinstance(eval_size, float) and 0 < eval_size < 1 else eval_size
    if not isinstance(k, (int, np.integer)) or k < 1 or k >= n:
        raise DataError(f"eval_size={eval_size!r} with {n} examples: choose 1..{n - 1} (or a fraction in (0, 1))")
    held = set(np.random.default_rng(seed).permutation(n)[: int(k)].tolist())
    pool = [e for i, e in enumerate(examples) if i not in held]
    ev = [e for i, e in enumerate(examples) if i in held]
    return pool, ev


def export_task(
    name: str, out_dir: str | Path, *, eval_size: int | float = 100, max_examples: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write a BIG-bench task as ``pool.jsonl``, ``eval.jsonl`` and ``task.json`` (the TaskSpec).

    Returns:
        ``{"pool": path, "eval": path, "task": path}``.
    """
    task, examples = load_bigbench_task(name, max_examples=max_examples, seed=seed)
    pool, ev = split_examples(examples, eval_size, seed)
    out = Path(out_dir)
    paths = {
        "pool": write_jsonl(out / "pool.jsonl", (example_to_row(e) for e in pool)),
        "eval": write_jsonl(out / "eval.jsonl", (example_to_row(e) for e in ev)),
    }
    spec = {
        "name": task.name,
        "labels": list(task.labels) if task.labels else None,
        "metric": task.metric,
        "instructions": task.instructions,
    }
    (out / "task.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    paths["task"] = out / "task.json"
    return paths
