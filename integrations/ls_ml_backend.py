"""Label Studio's ML-backend protocol, dataeff's side: the shapes Label Studio sends and expects, and
the Label Studio API calls that connect a backend to a project and ask it for predictions.

The protocol is the one ``label-studio-ml-backend`` serves (``label_studio_ml/api.py``) and
Label Studio 1.23 speaks (``label_studio/ml/api_connector.py``, ``ml/models.py``):

- ``GET /health`` (and ``GET /``): any 2xx means "up" (Label Studio waits 1 s, ``ML_TIMEOUT_HEALTH``).
- ``POST /setup`` with ``{"project": "<id>.<created-at unix time>", "schema": <label config>,
  "hostname", "access_token", "extra_params"}``: answers ``{"model_version": ...}`` within 3 s
  (``ML_TIMEOUT_SETUP``). Label Studio calls ``/health`` then ``/setup`` when a backend is added, each
  time the backends are listed and before every prediction request; the ``model_version`` becomes the
  backend's, and tasks that already hold a prediction of that version are not sent again.
- ``POST /predict`` with ``{"tasks": [<task>, ...], "project": "<id>.<ts>", "label_config": ...,
  "params": {"login", "password", "context"}}``: answers ``{"results": [<prediction>, ...]}`` with
  exactly one prediction per task, in order (``{"result": [<region>...], "score", "model_version"}``);
  Label Studio drops the whole batch when the counts differ. Waits up to 100 s (``ML_TIMEOUT_PREDICT``).
- ``POST /webhook`` with ``{"action": ..., "project": {"id": ...}, ...}``: Label Studio registers
  ``<backend url>/webhook`` as a project webhook for *all* actions when the backend is added
  (``ml/models.create_ml_webhook``) and waits 1 s for an answer (``WEBHOOK_TIMEOUT``); "Start
  training" on the model page also posts ``{"action": "START_TRAINING", "project": {...}}`` there
  (Label Studio 1.23; older versions post the annotated tasks to ``/train``).
- ``GET /versions``: ``{"versions": [...]}`` for the model page's version list.

Label Studio 1.23 refuses backends and webhooks on loopback and private addresses unless the
server runs with ``ML_BLOCK_LOCAL_IP=false`` (backends) and ``SSRF_PROTECTION_ENABLED=false``
(webhooks); the local server of :mod:`integrations.ls_server` sets both.

What a webhook tells dataeff is only that something changed: deletions, edits made while the
backend was down and webhooks lost to the 1 s timeout leave no trace, so the loop's pull
(:meth:`integrations.label_studio.LabelStudioClient.pull_labeled`, a full reconciliation) stays the
source of truth and a webhook only makes it run earlier.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from label_studio_sdk.core.api_error import ApiError

from dataeff.data import Example
from integrations.label_studio import InvalidLabel, LabelStudioClient, LabelStudioError, _Schema
from integrations.ls_reconcile import ID_FIELD, PROMPT_FIELD

log = logging.getLogger(__name__)

TRIGGER_ACTIONS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATIONS_CREATED",  # bulk import of annotated tasks
        "ANNOTATION_UPDATED",
        "ANNOTATION_DELETED",  # the name label-studio-ml-backend lists
        "ANNOTATIONS_DELETED",  # the name Label Studio 1.23 sends
        "START_TRAINING",  # "Start training" on the model page
    }
)
"""Webhook actions that ask for an early loop run; every other action is acknowledged and ignored."""
CONNECTED = "CO"
"""``MLBackend.state`` of a backend whose ``/health`` and ``/setup`` answered (Label Studio's "Connected")."""
BLOCKED_HINT = (
    "Label Studio refuses ML backends and webhooks on local or private addresses unless it runs with "
    "ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false (`dataeff label-studio start` sets both); "
    "restart it with those variables or give the backend an address it permits (--url)"
)


# ----------------------------------------------------------------------------- requests (pure)


def project_id_of(value: Any) -> int | None:
    """Label Studio's project id in a request: ``"<id>.<ts>"`` (/setup, /predict), a project dict
    (webhooks) or a plain id; ``None`` when absent or unreadable."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    head = str(value).split(".", 1)[0].strip()
    return int(head) if head.isdigit() else None


def task_example(task: Any) -> Example | None:
    """The dataeff item of a Label Studio task (``data.prompt`` + ``data.dataeff_id``), or ``None``
    for a task dataeff did not import (no ``dataeff_id``) or without a text prompt."""
    data = task.get("data") if isinstance(task, Mapping) else None
    if not isinstance(data, Mapping):
        return None
    item_id, prompt = data.get(ID_FIELD), data.get(PROMPT_FIELD)
    if item_id is None or str(item_id) == "" or not isinstance(prompt, str):
        return None
    return Example(prompt=prompt, id=str(item_id))


def task_examples(tasks: Sequence[Any]) -> list[Example]:
    """The dataeff items among ``tasks`` (each once, in order)."""
    seen: dict[str, Example] = {}
    for task in tasks:
        ex = task_example(task)
        if ex is not None and ex.id is not None:
            seen.setdefault(ex.id, ex)
    return list(seen.values())


def prediction_results(
    tasks: Sequence[Any],
    answers: Mapping[str, tuple[str, float]],
    label_config: str,
    model_version: str,
    project_id: int = 0,
    later: Collection[str] = (),
) -> list[dict | list]:
    """The ``results`` of a ``/predict`` answer: one prediction per task, in order.

    A task whose item has an answer gets it in the project's label-config format (a ``choices``
    region for a choice task, a ``textarea`` one for free text; see ``_Schema.result``) with its
    score; a task that is not a dataeff item, whose answer the pre-annotation rules withheld, or
    whose answer is not a valid label gets an empty ``result`` (Label Studio keeps the counts
    aligned and stores an empty prediction of ``model_version``, so it does not ask again for it).

    Args:
        tasks: the tasks of the request (Label Studio's task dicts).
        answers: ``dataeff_id -> (label or text, score)`` (``PrelabelPlan.answers``).
        label_config: the project's label config from the request.
        model_version: the predictor's Label Studio model version.
        project_id: for error messages.
        later: items not answered in this request (its time budget ran out): their tasks get an empty
            list, no prediction, which Label Studio does not store, so it asks for them again next time.

    Raises:
        LabelStudioError: ``label_config`` is not a dataeff project's config.
    """
    schema = _Schema.parse(label_config, project_id)
    not_now = {str(i) for i in later}
    out: list[dict | list] = []
    for task in tasks:
        ex = task_example(task)
        if ex is not None and str(ex.id) in not_now:
            out.append([])
            continue
        found = answers.get(str(ex.id)) if ex is not None else None
        result: list[dict] = []
        score: float | None = None
        if found is not None:
            label, confidence = found
            try:
                result = schema.result(label, f"prediction for item {ex.id!r}" if ex is not None else "prediction")
                score = round(float(confidence), 6)
            except InvalidLabel as exc:  # the rules pass only valid labels; a config edited since is skipped
                log.warning("project %s: %s; the task gets no prediction", project_id, exc)
        out.append({"result": result, "score": score, "model_version": model_version})
    return out


@dataclass(frozen=True)
class WebhookEvent:
    """A webhook Label Studio sent: its ``action``, the project it is about and whether it asks for
    an early loop run (:data:`TRIGGER_ACTIONS`)."""

    action: str
    project_id: int | None
    triggers: bool


def parse_event(payload: Any) -> WebhookEvent:
    """Read a webhook payload (``{"action": ..., "project": {"id": ...}, ...}``); never raises."""
    body = payload if isinstance(payload, Mapping) else {}
    action = str(body.get("action") or "").strip().upper()
    return WebhookEvent(
        action=action, project_id=project_id_of(body.get("project")), triggers=action in TRIGGER_ACTIONS
    )


# ----------------------------------------------------------------------------- Label Studio API


@dataclass(frozen=True)
class MLBackendInfo:
    """An ML backend as Label Studio reports it.

    Attributes:
        id: the backend's id in Label Studio.
        url: where Label Studio reaches it.
        title: its name on the model page.
        state: ``CO`` connected, ``DI`` disconnected, ``ER`` error, ``TR`` training, ``PR`` predicting.
        readable_state: the state as the model page shows it (``Connected``, ...).
        model_version: the version the backend's ``/setup`` answered last.
        error_message: why it is in error, when it is.
    """

    id: int
    url: str
    title: str
    state: str
    readable_state: str
    model_version: str
    error_message: str | None

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED


def _info(backend: Any) -> MLBackendInfo:
    state = getattr(backend, "state", None)
    state = getattr(state, "value", state)
    return MLBackendInfo(
        id=int(backend.id),
        url=str(backend.url),
        title=str(backend.title or ""),
        state=str(state or ""),
        readable_state=str(getattr(backend, "readable_state", "") or ""),
        model_version=str(backend.model_version or ""),
        error_message=backend.error_message or None,
    )


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _explain(exc: LabelStudioError, url: str) -> LabelStudioError:
    """A refusal of :func:`connect_backend` with what to do about it."""
    text = str(exc)
    if "reserved network address" in text or "SsrfBlocked" in text:
        return LabelStudioError(f"Label Studio refused the ML backend at {url}: {BLOCKED_HINT}")
    if "Can't connect to ML backend" in text or "health check failed" in text:
        return LabelStudioError(
            f"Label Studio cannot reach the ML backend at {url} (its /health failed): start `dataeff ml-backend` "
            "first and give the URL Label Studio reaches it at (--url); Label Studio said: " + text[:300]
        )
    return exc


def list_backends(client: LabelStudioClient, project_id: int) -> list[MLBackendInfo]:
    """The project's ML backends. Label Studio checks each (``/health`` + ``/setup``) while listing,
    so ``state`` and ``model_version`` are current."""
    client._project(project_id)
    found = client._call(
        f"list the ML backends of project {project_id}", lambda: list(client._sdk.ml.list(project=project_id))
    )
    return [_info(b) for b in found]


def connect_backend(
    client: LabelStudioClient,
    project_id: int,
    url: str,
    *,
    title: str = "dataeff",
    description: str = "",
) -> MLBackendInfo:
    """Connect the ML backend at ``url`` to the project (Settings -> Model, "Connect model").

    Idempotent: a backend of the project with that URL is checked again (``/health`` + ``/setup``)
    and returned, not added twice. Label Studio calls the backend's ``/health`` and ``/setup`` before
    it saves the backend, so the backend must already be serving; it then adds the project webhook
    ``<url>/webhook`` for all actions.

    Args:
        url: the backend's base URL as Label Studio reaches it (e.g. ``http://127.0.0.1:9090``).
        title: its name on the model page.

    Raises:
        LabelStudioError: Label Studio refused (the backend unreachable, or on an address it blocks:
            the message says what to set).
    """
    for backend in list_backends(client, project_id):
        if _same_url(backend.url, url):
            return backend
    try:
        made = client._call(
            f"connect the ML backend {url} to project {project_id}",
            lambda: client._sdk.ml.create(
                project=project_id,
                url=url,
                title=title,
                description=description,
                is_interactive=False,
            ),
            idempotent=False,
        )
    except LabelStudioError as exc:
        raise _explain(exc, url) from None
    return _info(made)


def disconnect_backend(client: LabelStudioClient, backend_id: int) -> None:
    """Remove an ML backend from its project (its webhook stays; remove it in Settings -> Webhooks)."""
    client._call(f"remove ML backend {backend_id}", lambda: client._sdk.ml.delete(id=backend_id))


def backend_webhooks(client: LabelStudioClient, project_id: int, url: str) -> list[dict]:
    """The project's webhooks that post to the backend at ``url`` (``<url>/webhook``):
    ``[{id, url, is_active, send_for_all_actions}]``."""
    target = url.rstrip("/") + "/webhook"
    hooks = client._call(
        f"list the webhooks of project {project_id}", lambda: list(client._sdk.webhooks.list(project=str(project_id)))
    )
    return [
        {
            "id": int(h.id),
            "url": h.url,
            "is_active": bool(h.is_active),
            "send_for_all_actions": bool(h.send_for_all_actions),
        }
        for h in hooks
        if _same_url(str(h.url), target) and getattr(h, "project", project_id) in (project_id, None)
    ]


def retrieve_predictions(
    client: LabelStudioClient, project_id: int, task_ids: Sequence[int] | None = None, *, timeout: float = 300.0
) -> dict:
    """The Data Manager action "Retrieve Predictions" (``retrieve_tasks_predictions``) on some tasks
    (default: all): Label Studio sends the selected tasks that hold no prediction of the backend's
    current ``model_version`` to its ``/predict`` in one request and stores the answers. Returns
    Label Studio's answer (``{"processed_items": n, "detail": ...}``).

    Args:
        timeout: seconds to wait for Label Studio (it waits for the backend's predictions).
    """
    selected: dict[str, Any] = (
        {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": [int(i) for i in task_ids]}
    )

    def send() -> Any:
        response = client._sdk._client_wrapper.httpx_client.request(
            "api/dm/actions/",
            method="POST",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": selected},
            request_options={"timeout": timeout},
        )
        if not 200 <= response.status_code < 300:
            raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text)
        try:
            return response.json()
        except ValueError:
            return {}

    answer = client._call(f"retrieve predictions for project {project_id}", send, idempotent=False)
    return dict(answer) if isinstance(answer, Mapping) else {}


__all__ = [
    "BLOCKED_HINT",
    "CONNECTED",
    "TRIGGER_ACTIONS",
    "MLBackendInfo",
    "WebhookEvent",
    "backend_webhooks",
    "connect_backend",
    "disconnect_backend",
    "list_backends",
    "parse_event",
    "prediction_results",
    "project_id_of",
    "retrieve_predictions",
    "task_example",
    "task_examples",
]
