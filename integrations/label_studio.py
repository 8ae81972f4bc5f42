"""Label Studio adapter: project set-up, pool import, pulling labels by cursor, pushing
priorities / predictions / status. Built on ``label-studio-sdk`` 2.x; returns plain dataclasses
and :class:`dataeff.data.Example`, never SDK types.

Conventions (see docs/label-studio.md):

- Task data: ``prompt`` (the text), ``dataeff_id`` (stable external id of the item) and
  ``dataeff_priority`` (number, **higher = labeled first**; 0 on import).
- Label config: ``<Text name="prompt">`` plus ``<Choices name="answer">`` (one ``Choice`` per
  label) for choice tasks or ``<TextArea name="answer">`` for free-form tasks.
- Which annotation of a task counts (several annotators): cancelled/skipped annotations and
  malformed ones are ignored; among the rest a ``ground_truth`` annotation wins, otherwise the most
  recently updated one (ties: the higher annotation id).
- A pull lists every annotated task each time (about 4.5 s per 1,000 labeled tasks on a local
  SQLite server): Label Studio keeps no trace of a deleted annotation, so deletions can only be
  found by reconciling the currently annotated set with the cursor's.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from xml.sax.saxutils import quoteattr

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from dataeff.data import Example, TaskSpec
from dataeff.errors import DataEffError, DataError
from integrations.ls_reconcile import (
    ID_FIELD,
    PROMPT_FIELD,
    Cursor,
    PullResult,
    reconcile,
)
from integrations.ls_status import STATUS_MARKER as STATUS_MARKER  # re-exported: the marker people write below
from integrations.ls_status import compose, split_description

log = logging.getLogger(__name__)
T = TypeVar("T")

PRIORITY_FIELD = "dataeff_priority"
ANSWER_NAME = "answer"
PRIORITY_VIEW_TITLE = "dataeff priority"
PRIORITY_VIEW_ORDERING = f"-tasks:data.{PRIORITY_FIELD}"
PRIORITY_VIEW_COLUMNS: tuple[str, ...] = (
    "tasks:id",
    "tasks:completed_at",  # "Completed": when the task got its first annotation (empty = still to label)
    "tasks:annotators",  # "Annotated by"
    "tasks:annotations_results",
    "tasks:predictions_score",
    "tasks:predictions_results",
    f"tasks:data.{PRIORITY_FIELD}",
    f"tasks:data.{PROMPT_FIELD}",
)
"""Columns of the "dataeff priority" tab (Label Studio 1.23 column ids, ``data_manager/functions.py``
``get_all_columns``); every other column is hidden."""
PRIORITY_VIEW_LABELING_COLUMNS: tuple[str, ...] = (
    "tasks:id",
    "tasks:completed_at",
    f"tasks:data.{PRIORITY_FIELD}",
    f"tasks:data.{PROMPT_FIELD}",
)
"""Columns of the task list beside the labeling stream (the tab's "labeling" mode)."""
PRIORITY_VIEW_ALWAYS_HIDDEN = frozenset({f"tasks:data.{ID_FIELD}", "tasks:inner_id"})
"""Hidden even when the server does not list them yet (a project before its first import)."""
MIN_TITLE, MAX_TITLE = 3, 50
_ANNOTATED_QUERY = json.dumps(
    {
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
            ],
        }
    }
)


# ----------------------------------------------------------------------------- errors


class LabelStudioError(DataEffError):
    """A Label Studio call failed. ``retryable`` says whether trying again later may succeed."""

    retryable = False


class LabelStudioAuthError(LabelStudioError):
    """The server rejected the API token (HTTP 401/403)."""


class LabelStudioUnavailable(LabelStudioError):
    """The server was down, reset the connection, timed out or answered 5xx, after all retries."""

    retryable = True


class ProjectNotFound(LabelStudioError):
    """No project with that id (or title) exists on the server."""


class InvalidLabel(LabelStudioError, DataError):
    """An answer that is not one of the project's labels."""


class InvalidTask(LabelStudioError, DataError):
    """A pool item or task that cannot be used (empty prompt, no id, duplicate id)."""


# ----------------------------------------------------------------------------- plain types


@dataclass(frozen=True)
class ImportReport:
    """Outcome of :meth:`LabelStudioClient.import_pool`.

    Attributes:
        created: tasks created now.
        skipped: items already in the project (same ``dataeff_id``), not imported again.
        invalid: one :class:`InvalidTask` per rejected item (message names the item); the rest
            were imported.
    """

    created: int
    skipped: int
    invalid: tuple[InvalidTask, ...] = ()


@dataclass(frozen=True)
class TaskRecord:
    """One Label Studio task as the adapter sees it (``data`` is the task's data dict)."""

    task_id: int
    dataeff_id: str
    data: Mapping[str, Any]


# ----------------------------------------------------------------------------- label config


def label_config(task: TaskSpec) -> str:
    """Label Studio XML config for ``task``.

    Choice tasks get ``<Choices name="answer" choice="single">`` with one ``<Choice>`` per label,
    free-form tasks a ``<TextArea name="answer">``; the text is ``<Text name="prompt"
    value="$prompt">``. ``task.instructions`` is shown as a header when set.
    """
    parts = ["<View>"]
    if task.instructions:
        parts.append(f"  <Header value={quoteattr(task.instructions)}/>")
    parts.append(f'  <Text name="{PROMPT_FIELD}" value="${PROMPT_FIELD}"/>')
    labels = _labels_of(task)
    if labels is not None:
        parts.append(f'  <Choices name="{ANSWER_NAME}" toName="{PROMPT_FIELD}" choice="single" required="true">')
        parts.extend(f"    <Choice value={quoteattr(label)}/>" for label in labels)
        parts.append("  </Choices>")
    else:
        parts.append(
            f'  <TextArea name="{ANSWER_NAME}" toName="{PROMPT_FIELD}" maxSubmissions="1" editable="true" required="true"/>'
        )
    parts.append("</View>")
    return "\n".join(parts)


@dataclass(frozen=True)
class _Schema:
    """What a project's label config accepts: ``labels`` for choices, ``None`` for free text."""

    labels: tuple[str, ...] | None

    @classmethod
    def parse(cls, config: str, project_id: int) -> _Schema:
        try:
            root = ET.fromstring(config)
        except ET.ParseError as exc:
            raise LabelStudioError(f"project {project_id}: label config is not valid XML ({exc})") from None
        for node in root.iter():
            if node.attrib.get("name") != ANSWER_NAME:
                continue
            if node.tag == "Choices":
                return cls(labels=tuple(c.attrib["value"] for c in node.iter("Choice") if "value" in c.attrib))
            if node.tag == "TextArea":
                return cls(labels=None)
        raise LabelStudioError(
            f"project {project_id}: its label config has no <Choices> or <TextArea> named {ANSWER_NAME!r}; "
            "it was not made by dataeff (use ensure_project)"
        )

    def result(self, answer: str | None, where: str) -> list[dict]:
        """Annotation/prediction ``result`` for ``answer``; :class:`InvalidLabel` if not allowed (or missing)."""
        if not isinstance(answer, str) or not answer.strip():
            raise InvalidLabel(f"{where}: empty answer; give one of the labels or a non-empty text")
        if self.labels is not None:
            if answer not in self.labels:
                raise InvalidLabel(f"{where}: label {answer!r} is not in the project's label set {list(self.labels)}")
            value, kind = {"choices": [answer]}, "choices"
        else:
            value, kind = {"text": [answer]}, "textarea"
        return [{"from_name": ANSWER_NAME, "to_name": PROMPT_FIELD, "type": kind, "value": value}]

    def answer(self, result: Any) -> str:
        """The answer in an annotation ``result``; ``ValueError`` with the reason if malformed."""
        if not isinstance(result, list) or not result:
            raise ValueError("empty result")
        for item in result:
            if not isinstance(item, dict) or item.get("from_name") != ANSWER_NAME:
                continue
            value = item.get("value") or {}
            if self.labels is not None:
                choices = value.get("choices")
                if not isinstance(choices, list) or len(choices) != 1:
                    raise ValueError(f"expected exactly one choice, got {choices!r}")
                if choices[0] not in self.labels:
                    raise ValueError(f"label {choices[0]!r} is not in the label set {list(self.labels)}")
                return choices[0]
            texts = [t for t in value.get("text") or [] if isinstance(t, str) and t.strip()]
            if not texts:
                raise ValueError("empty text answer")
            return texts[0].strip()
        raise ValueError(f"no result for the control {ANSWER_NAME!r}")


def _view_differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a view's data lacks the title, order or columns of ``wanted`` (column order aside)."""
    if current.get("title") != wanted["title"] or list(current.get("ordering") or []) != wanted["ordering"]:
        return True
    hidden = current.get("hiddenColumns")
    if not isinstance(hidden, Mapping):
        return True
    return any(set(hidden.get(mode) or []) != set(cols) for mode, cols in wanted["hiddenColumns"].items())


def _labels_of(task: TaskSpec) -> tuple[str, ...] | None:
    return tuple(task.labels) if task.labels else None  # the test of task.is_choice, which mypy can narrow on


class LabelStudioClient:
    """Talks to one Label Studio server.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8080``.
        token: the user's API token (legacy token; the server needs
            ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``). Kept out of ``repr`` and logs.
        retries: extra attempts after a transient failure (connection refused/reset, timeout,
            HTTP 5xx). Non-idempotent calls (creating annotations/predictions, importing) are
            retried only when the connection was refused (nothing reached the server).
        backoff: seconds before the first retry; doubled each time (0.5, 1, 2, ...).
        timeout: seconds per HTTP request.
        page_size: tasks per page when listing.
        httpx_client: optional ``httpx.Client`` (proxies, certificates, event hooks).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 30.0,
        page_size: int = 500,
        httpx_client: httpx.Client | None = None,
    ) -> None:
        if not token:
            raise LabelStudioAuthError("no Label Studio API token given; set LABEL_STUDIO_API_KEY or pass token=")
        self.url = url.rstrip("/")
        self._token = token
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.page_size = page_size
        kwargs: dict[str, Any] = {"base_url": self.url, "api_key": token, "timeout": timeout, "max_retries": 0}
        if httpx_client is not None:
            kwargs["httpx_client"] = httpx_client
        self._sdk = LabelStudio(**kwargs)
        self._users: dict[int, str] = {}

    @classmethod
    def from_env(cls, **kwargs: Any) -> LabelStudioClient:
        """Build from ``LABEL_STUDIO_URL`` (default ``http://127.0.0.1:8080``) and ``LABEL_STUDIO_API_KEY``."""
        return cls(
            os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080"),
            os.environ.get("LABEL_STUDIO_API_KEY", ""),
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token='***', retries={self.retries})"

    # -- error handling
    def _call(
        self, what: str, fn: Callable[[], T], *, idempotent: bool = True, not_found: LabelStudioError | None = None
    ) -> T:
        """Run ``fn`` with retries on transient failures and map errors to our types."""
        attempt = 0
        while True:
            try:
                return fn()
            except ApiError as exc:
                status = exc.status_code or 0
                if status in (401, 403):
                    raise LabelStudioAuthError(
                        f"Label Studio at {self.url} rejected the API token while trying to {what} (HTTP {status}): "
                        "check the token / LABEL_STUDIO_API_KEY (legacy tokens also need "
                        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server)"
                    ) from None
                if status == 404 and not_found is not None:
                    raise not_found from None
                if status < 500 and status not in (408, 429):
                    body = str(exc.body)[:500]
                    raise LabelStudioError(f"Label Studio refused to {what} (HTTP {status}): {body}") from None
                transient = f"HTTP {status}"
                retry_ok = idempotent
            except (httpx.TransportError, ConnectionError) as exc:
                transient = exc.__class__.__name__
                retry_ok = idempotent or isinstance(exc, (httpx.ConnectError, ConnectionRefusedError))
            if not retry_ok or attempt >= self.retries:
                raise LabelStudioUnavailable(
                    f"Label Studio at {self.url} is unavailable ({transient}) while trying to {what}, after "
                    f"{attempt + 1} attempt(s); check that the server runs (dataeff label-studio status) "
                    "and try again"
                ) from None
            delay = self.backoff * (2**attempt)
            log.warning(
                "Label Studio %s failed (%s); retry %d/%d in %.1f s", what, transient, attempt + 1, self.retries, delay
            )
            time.sleep(delay)
            attempt += 1

    def _in_chunks(
        self,
        rows: Sequence[dict],
        batch_size: int,
        what: str,
        send: Callable[[list], Any],
        not_found: LabelStudioError | None = None,
    ) -> None:
        """Send ``rows`` in chunks of ``batch_size`` (each chunk one non-idempotent request)."""
        for start in range(0, len(rows), batch_size):
            chunk = list(rows[start : start + batch_size])
            self._call(
                f"import {len(chunk)} {what}", functools.partial(send, chunk), idempotent=False, not_found=not_found
            )

    def _project(self, project_id: int) -> Any:
        return self._call(
            f"read project {project_id}",
            lambda: self._sdk.projects.get(id=project_id),
            not_found=ProjectNotFound(
                f"Label Studio project {project_id} not found at {self.url}; create it with ensure_project() or check the id"
            ),
        )

    def _schema(self, project_id: int) -> _Schema:
        return _Schema.parse(self._project(project_id).label_config or "", project_id)

    def _list_tasks(
        self,
        project_id: int,
        *,
        fields: str = "task_only",
        query: str | None = None,
        view: int | None = None,
        check_project: bool = True,
    ) -> list:
        """All tasks of a project (every page; the whole listing is retried on a transient failure)."""
        if check_project:
            self._project(project_id)  # a clear ProjectNotFound instead of an empty list

        def listing() -> list:
            kwargs: dict[str, Any] = {"project": project_id, "fields": fields, "page_size": self.page_size}
            if query is not None:
                kwargs["query"] = query
            if view is not None:
                kwargs["view"] = view
            return list(self._sdk.tasks.list(**kwargs))

        return self._call(f"list the tasks of project {project_id}", listing)

    def tasks(self, project_id: int, *, view: int | None = None) -> list[TaskRecord]:
        """Every task of the project (in the order of ``view`` when given)."""
        return [
            TaskRecord(
                task_id=t.id, dataeff_id=str((t.data or {}).get(ID_FIELD, f"ls-task-{t.id}")), data=dict(t.data or {})
            )
            for t in self._list_tasks(project_id, view=view)
        ]

    def _task_index(
        self, project_id: int, dataeff_ids: Iterable[str], records: Sequence[TaskRecord] | None = None
    ) -> dict[str, TaskRecord]:
        """``dataeff_id -> TaskRecord`` for the wanted ids; :class:`InvalidTask` naming missing ones."""
        wanted = list(dict.fromkeys(str(i) for i in dataeff_ids))
        index = {t.dataeff_id: t for t in (records if records is not None else self.tasks(project_id))}
        missing = [i for i in wanted if i not in index]
        if missing:
            raise InvalidTask(
                f"project {project_id} has no task with dataeff_id {missing[:5]}"
                f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}; import the pool first"
            )
        return {i: index[i] for i in wanted}

    # -- projects
    def find_project(self, title: str) -> int | None:
        """Id of the project titled exactly ``title`` (lowest id if several), or ``None``."""
        found: list[Any] = self._call(f"find project {title!r}", lambda: list(self._sdk.projects.list(title=title)))
        ids = sorted(p.id for p in found if p.title == title)
        return ids[0] if ids else None

    def ensure_project(self, title: str, task: TaskSpec, description: str = "") -> int:
        """Create the project for ``task`` or reuse the one with this exact title (idempotent).

        Raises:
            LabelStudioError: a project with this title exists but its labels differ from
                ``task.labels`` (use another title or fix the label set).
            DataError: the title is shorter than 3 or longer than 50 characters.
        """
        if not MIN_TITLE <= len(title.strip()) <= MAX_TITLE:
            raise DataError(
                f"project title {title!r}: must be {MIN_TITLE} to {MAX_TITLE} characters (Label Studio's limits)"
            )
        existing = self.find_project(title)
        if existing is not None:
            schema = self._schema(existing)
            if schema.labels != _labels_of(task):
                raise LabelStudioError(
                    f"project {title!r} (id {existing}) exists with labels {schema.labels} but the task has "
                    f"{_labels_of(task)}; choose another title or use the same label set"
                )
            return existing
        project = self._call(
            f"create project {title!r}",
            lambda: self._sdk.projects.create(title=title, label_config=label_config(task), description=description),
            idempotent=False,
        )
        log.info("created Label Studio project %r (id %s)", title, project.id)
        if project.id is None:  # the SDK's model allows it; a created project always has one
            raise LabelStudioError(f"Label Studio created project {title!r} but returned no id")
        return project.id

    # -- import
    def import_pool(self, project_id: int, examples: Sequence[Example], batch_size: int = 500) -> ImportReport:
        """Import unlabeled items as tasks, each once (keyed by ``Example.id`` as ``dataeff_id``).

        Items already in the project are skipped, so re-importing the same pool adds nothing.
        Items with an empty prompt, no id or a duplicate id are reported in ``invalid``; the rest
        are imported in batches of ``batch_size``. New tasks get ``dataeff_priority = 0``.
        """
        existing = {t.dataeff_id for t in self.tasks(project_id)}
        invalid: list[InvalidTask] = []
        fresh: list[dict] = []
        skipped = 0
        batch_ids: set[str] = set()
        for position, ex in enumerate(examples):
            where = f"pool item {ex.id!r} (position {position})"
            if ex.id is None or not str(ex.id).strip():
                invalid.append(InvalidTask(f"pool item at position {position}: no id; give every item a stable id"))
                continue
            if not isinstance(ex.prompt, str) or not ex.prompt.strip():
                invalid.append(InvalidTask(f"{where}: empty prompt; fix the text or drop the item"))
                continue
            key = str(ex.id)
            if key in existing:
                skipped += 1
                continue
            if key in batch_ids:
                invalid.append(InvalidTask(f"{where}: duplicate id {key!r} in the pool; ids must be unique"))
                continue
            batch_ids.add(key)
            fresh.append({"data": {PROMPT_FIELD: ex.prompt, ID_FIELD: key, PRIORITY_FIELD: 0}})
        for message in invalid:
            log.warning("import into project %s: %s", project_id, message)
        self._in_chunks(
            fresh,
            batch_size,
            f"tasks into project {project_id}",
            lambda chunk: self._sdk.projects.import_tasks(id=project_id, request=chunk),
            not_found=ProjectNotFound(f"Label Studio project {project_id} not found at {self.url}"),
        )
        return ImportReport(created=len(fresh), skipped=skipped, invalid=tuple(invalid))

    # -- pull
    def _annotator(self, user_id: Any) -> str:
        if isinstance(user_id, Mapping):
            return str(user_id.get("email") or user_id.get("id"))
        if user_id is None:
            return ""
        if user_id not in self._users:
            try:
                users = self._call("list users", lambda: list(self._sdk.users.list()))
                self._users.update({u.id: u.email or u.username or str(u.id) for u in users})
            except LabelStudioAuthError:
                pass
        return self._users.get(user_id, str(user_id))

    def pull_labeled(self, project_id: int, since: Cursor | None = None) -> PullResult:
        """Read every labeled item of the project and reconcile it with ``since``.

        Lists all annotated tasks (paginated; deletions leave no trace in Label Studio, so only a
        full listing can find them). For each task the counted annotation is chosen among the
        non-cancelled, well-formed ones: a ``ground_truth`` one first, else the latest
        ``updated_at`` (ties: higher id). Malformed annotations go to ``errors``; tasks without a
        ``dataeff_id`` (made by hand) to ``unmanaged_task_ids``. Nothing is logged here: the caller
        reports both, once.

        Args:
            since: the cursor of the previous pull (``None``: first pull, everything is new).

        Returns:
            A :class:`PullResult` with a NEW cursor; ``since`` is never modified.

        Raises:
            LabelStudioUnavailable: the server is down/slow after retries (retry later with the
                same cursor: nothing is lost).
            LabelStudioAuthError, ProjectNotFound.
        """
        schema = self._schema(project_id)
        tasks = self._list_tasks(project_id, fields="all", query=_ANNOTATED_QUERY, check_project=False)
        return reconcile(tasks, schema.answer, since, annotator_of=self._annotator)

    # -- annotations (simulated annotator, tests)
    def create_annotations(
        self,
        project_id: int,
        answers: Mapping[str, str | None],
        *,
        annotator_id: int | None = None,
        ground_truth: bool = False,
        cancelled: bool = False,
        skip_labeled: bool = False,
    ) -> dict[str, int]:
        """Annotate many items (one task listing for all of them); returns ``{dataeff_id: annotation_id}``.

        Every answer is checked against the label config before anything is written, so a bad
        label (:class:`InvalidLabel`, naming the item) writes nothing. With ``skip_labeled``, items
        that already carry a counted annotation are left as they are (re-running adds nothing).
        """
        schema = self._schema(project_id)
        results = {str(i): schema.result(a, f"item {i!r} of project {project_id}") for i, a in answers.items()}
        index = self._task_index(project_id, results)
        if skip_labeled:
            labeled = {str(e.id) for e in self.pull_labeled(project_id).examples}
            results = {i: r for i, r in results.items() if i not in labeled}
        created: dict[str, int] = {}
        for item_id, result in results.items():
            kwargs: dict[str, Any] = {"result": result, "ground_truth": ground_truth, "was_cancelled": cancelled}
            if annotator_id is not None:
                kwargs["completed_by"] = annotator_id
            task_id = index[item_id].task_id
            ann = self._call(
                f"annotate item {item_id!r}",
                functools.partial(self._sdk.annotations.create, id=task_id, **kwargs),
                idempotent=False,
            )
            created[item_id] = int(ann.id)
        return created

    # -- priorities and the sorted view
    def push_priorities(
        self, project_id: int, priorities: Mapping[str, float], *, _records: Sequence[TaskRecord] | None = None
    ) -> int:
        """Set the numeric task field ``dataeff_priority`` (higher = labeled first).

        Other data fields are kept. Tasks whose priority already has that value are not touched
        (one PATCH per changed task). Returns the number of tasks updated.

        Raises:
            InvalidTask: naming ids that are not in the project (nothing is changed).
        """
        index = self._task_index(project_id, priorities, _records)
        updated = 0
        for item_id, value in priorities.items():
            value = float(value)
            record = index[str(item_id)]
            if record.data.get(PRIORITY_FIELD) == value:
                continue
            data = {**record.data, PRIORITY_FIELD: value}
            self._call(
                f"set the priority of item {item_id!r}",
                functools.partial(self._sdk.tasks.update, id=str(record.task_id), data=data),
            )
            updated += 1
        return updated

    def _dm_columns(self, project_id: int) -> set[str]:
        """Ids of every Data Manager column of the project, as views name them (``tasks:<id>``,
        ``tasks:data.<field>``), from ``GET /api/dm/columns`` (not wrapped by the SDK)."""

        def fetch() -> Any:
            response = self._sdk._client_wrapper.httpx_client.request(
                "api/dm/columns/", method="GET", params={"project": project_id}
            )
            if not 200 <= response.status_code < 300:
                raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text)
            return response.json()

        payload = self._call(f"list the Data Manager columns of project {project_id}", fetch)
        ids: set[str] = set()
        for column in payload.get("columns", []) if isinstance(payload, dict) else []:
            if column.get("id") == "data" and column.get("parent") is None and column.get("children"):
                continue  # the group header of the data fields, not a column
            prefix = "tasks:data." if column.get("parent") == "data" else "tasks:"
            ids.add(prefix + str(column["id"]))
        return ids

    def _view_columns(self, project_id: int, hidden: Any) -> dict[str, list[str]]:
        """The ``hiddenColumns`` of the priority view: every column but :data:`PRIORITY_VIEW_COLUMNS`
        hidden (a view made by an older dataeff, without ``hiddenColumns``), or the view's own
        choice with those columns shown again."""
        if isinstance(hidden, Mapping) and hidden:
            out = {}
            for mode, shown in (("explore", PRIORITY_VIEW_COLUMNS), ("labeling", PRIORITY_VIEW_LABELING_COLUMNS)):
                kept = [c for c in hidden.get(mode) or [] if c not in shown]
                out[mode] = kept
            return out
        every = self._dm_columns(project_id) | PRIORITY_VIEW_ALWAYS_HIDDEN
        return {
            "explore": sorted(every - set(PRIORITY_VIEW_COLUMNS)),
            "labeling": sorted(every - set(PRIORITY_VIEW_LABELING_COLUMNS)),
        }

    def ensure_priority_view(self, project_id: int) -> int:
        """Create or repair the Data Manager tab ``dataeff priority``; returns its view id.

        The tab is sorted by ``dataeff_priority`` descending and shows the columns an annotator
        needs (:data:`PRIORITY_VIEW_COLUMNS`: ID, completed, annotated by, annotation results,
        prediction score and result, the priority, the text); every other column (Inner ID, upload
        and storage filename, drafts, lead time, ...) is hidden through the view's
        ``hiddenColumns``, which Label Studio also needs to compute the annotation and prediction
        columns at all. Idempotent: a tab made by an older dataeff (no ``hiddenColumns``) or
        re-sorted by hand is updated in place; columns someone showed or hid by hand are kept,
        except that the columns above are shown again. Annotators open the tab and click "Label
        Tasks As Displayed" (Community edition has no server-side queue that follows a field).
        """
        self._project(project_id)
        views = self._call(
            f"list the views of project {project_id}", lambda: list(self._sdk.views.list(project=project_id))
        )
        existing = next((v for v in views if (v.data or {}).get("title") == PRIORITY_VIEW_TITLE), None)
        current: dict[str, Any] = dict(existing.data or {}) if existing is not None else {}
        data = {
            **current,
            "title": PRIORITY_VIEW_TITLE,
            "ordering": [PRIORITY_VIEW_ORDERING],
            "filters": current.get("filters") or {"conjunction": "and", "items": []},
            "hiddenColumns": self._view_columns(project_id, current.get("hiddenColumns")),
        }
        if existing is None:
            view = self._call(
                f"create the priority view of project {project_id}",
                lambda: self._sdk.views.create(project=project_id, data=data),
                idempotent=False,
            )
            return int(view.id)
        if _view_differs(current, data):
            log.info("updating the %r tab of project %s (columns / order)", PRIORITY_VIEW_TITLE, project_id)
            self._call(
                f"update the priority view of project {project_id}",
                lambda: self._sdk.views.update(str(existing.id), project=project_id, data=data),
            )
        return int(existing.id)

    # -- predictions
    def push_predictions(
        self, project_id: int, predictions: Mapping[str, tuple[str, float]], model_version: str, batch_size: int = 500
    ) -> int:
        """Attach model guesses as pre-annotations and make ``model_version`` the project's.

        Args:
            predictions: ``dataeff_id -> (label_or_text, score)``; score in [0, 1].
            model_version: name shown in Label Studio; predictions are shown to annotators only
                when it equals the project's ``model_version`` (set here).

        Idempotent: a task that already has a prediction of this ``model_version`` is skipped.
        Predictions go in bulk (``batch_size`` per request). Returns the number created.

        Raises:
            InvalidLabel: a predicted label is not in the label set (nothing is pushed).
            InvalidTask: an id is not in the project.
        """
        if not model_version:
            raise LabelStudioError("push_predictions needs a non-empty model_version")
        schema = self._schema(project_id)
        results = {
            str(i): (schema.result(a, f"prediction for item {i!r}"), float(s)) for i, (a, s) in predictions.items()
        }
        index = self._task_index(project_id, results)
        existing = self._call(
            f"list the predictions of project {project_id}",
            lambda: list(self._sdk.predictions.list(project=project_id)),
        )
        done = {p.task for p in existing if p.model_version == model_version}
        rows = [
            {"task": index[i].task_id, "result": result, "score": score, "model_version": model_version}
            for i, (result, score) in results.items()
            if index[i].task_id not in done
        ]
        self._in_chunks(
            rows,
            batch_size,
            f"predictions into project {project_id}",
            lambda chunk: self._sdk.projects.import_predictions(id=project_id, request=chunk),
        )
        created = len(rows)
        self._call(
            f"set model_version of project {project_id}",
            lambda: self._sdk.projects.update(id=project_id, model_version=model_version),
        )
        return created

    def _predictions_on(self, project_id: int, exclude: Collection[str]) -> list:
        """The project's predictions on items other than ``exclude`` (dataeff ids)."""
        excluded = set(map(str, exclude))
        skip = {t.task_id for t in self.tasks(project_id) if t.dataeff_id in excluded}
        found = self._call(
            f"list the predictions of project {project_id}",
            lambda: list(self._sdk.predictions.list(project=project_id)),
        )
        return [p for p in found if p.task not in skip]

    def prediction_counts(self, project_id: int, exclude: Collection[str] = ()) -> dict[str, int]:
        """Predictions per ``model_version`` on the project's items other than ``exclude`` (dataeff ids)."""
        return dict(Counter(str(p.model_version or "") for p in self._predictions_on(project_id, exclude)))

    def delete_predictions(self, project_id: int, model_version: str, exclude: Collection[str] = ()) -> int:
        """Delete the predictions of ``model_version`` on the project's items other than ``exclude``.

        For withdrawing pre-annotations known to be poor: Label Studio's task view pre-selects a
        task's first prediction whatever its version when the task has no annotation, so switching
        the project's ``model_version`` alone does not withdraw them. Annotations are never touched;
        pass the labeled items as ``exclude`` to keep the predictions made for them. Returns the
        number deleted (0 when none are left: idempotent).
        """
        doomed = [
            p.id for p in self._predictions_on(project_id, exclude) if str(p.model_version or "") == model_version
        ]
        gone = LabelStudioError("already deleted")
        for pred_id in doomed:
            try:
                self._call(
                    f"delete prediction {pred_id} of project {project_id}",
                    functools.partial(self._sdk.predictions.delete, id=pred_id),
                    not_found=gone,
                )
            except LabelStudioError as exc:
                if exc is not gone:
                    raise
        return len(doomed)

    def project_info(self, project_id: int) -> dict:
        """``{id, title, description, model_version, label_config, expert_instruction,
        show_instruction, sampling}`` of a project."""
        p = self._project(project_id)
        return {
            "id": p.id,
            "title": p.title,
            "description": p.description or "",
            "model_version": p.model_version or "",
            "label_config": p.label_config or "",
            "expert_instruction": p.expert_instruction or "",
            "show_instruction": bool(p.show_instruction),
            "sampling": str(p.sampling or ""),
        }

    # -- status
    def set_status(self, project_id: int, text: str, *, done: bool | None = None) -> bool:
        """Show the status ``text`` to annotators where they look; returns whether anything changed.

        Written at the top of the project's description (with how to label, above
        :data:`STATUS_MARKER`) and at the top of the labeling instructions, which are switched on
        (``show_instruction``); what people wrote below the marker in either is kept (a description
        of an older dataeff, status at the bottom, is converted). ``done`` says that no more labels
        are needed; by default a text starting with ``stop`` (every stop decision of the policy)
        means done. Nothing is written when both are already current. See
        :mod:`integrations.ls_status` for the wording.
        """
        info = self.project_info(project_id)
        texts = compose(text, info["description"], info["expert_instruction"], done)
        if (
            texts.description == info["description"]
            and texts.instructions == info["expert_instruction"]
            and info["show_instruction"]
        ):
            return False
        self._call(
            f"set the status of project {project_id}",
            lambda: self._sdk.projects.update(
                id=project_id,
                description=texts.description,
                expert_instruction=texts.instructions,
                show_instruction=True,
            ),
        )
        return True

    def get_status(self, project_id: int) -> str:
        """The status text last given to :meth:`set_status` ('' when none)."""
        return split_description(self.project_info(project_id)["description"])[0]
