"""``dataeff ml-backend``: one project's model behind Label Studio's ML-backend protocol (FastAPI).

Endpoints (the protocol of ``label-studio-ml-backend``; shapes in :mod:`integrations.ls_ml_backend`):

| endpoint | what it does |
|---|---|
| ``GET /health``, ``GET /`` | ``{"status": "UP", "model_class": ..., "project": ..., "early_runs": {...}}``, at once |
| ``POST /setup`` | ``{"model_version": <the current predictor's>}``: the latest adapter or the base model |
| ``POST /predict`` | one prediction per task, in the project's label-config format; empty where the rules withhold; within :data:`PREDICT_BUDGET_SECONDS` (items not reached get none now and are asked for again) |
| ``POST /webhook`` | annotation created/updated/deleted and "Start training": schedules an early loop run, answers at once |
| ``POST /train`` | the same as a ``START_TRAINING`` webhook (what Label Studio before 1.11 posts) |
| ``GET /versions`` | ``{"versions": [<current model_version>]}`` for the model page |

A request about another Label Studio project than the one served is refused (HTTP 400), so a
backend connected to the wrong project shows as "Error" on its model page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dataeff.errors import DataEffError
from flows.services import Services
from flows.webhook import EarlyRuns
from integrations import ls_ml_backend as proto

log = logging.getLogger(__name__)

MODEL_CLASS = "DataeffPredictor"
PREDICTOR_TTL_SECONDS = 10.0
"""How long the current predictor is reused between requests (Label Studio calls /setup before every
/predict and on every listing; a new adapter is picked up within this many seconds)."""
PREDICT_BUDGET_SECONDS = 60.0
"""Time a ``/predict`` request spends answering, below Label Studio's own limit (``ML_TIMEOUT_PREDICT``,
100 s), after which it drops the whole answer. Items are answered in chunks of :data:`PREDICT_CHUNK`
while the next chunk is expected to end within the budget; the tasks of items not reached get no
prediction (an empty list, which Label Studio does not store), so the next "Retrieve predictions"
asks for exactly those again: a big selection fills in over a few clicks instead of failing."""
PREDICT_CHUNK = 64
"""Items per scoring call of a ``/predict`` request (the pre-annotation rules judge each chunk)."""


class BadRequest(DataEffError):
    """A request the backend refuses (HTTP 400): about another Label Studio project, or malformed."""


class Backend:
    """The protocol's logic for one project, independent of the HTTP server.

    Args:
        svc: the project's services (config, Label Studio client, MLflow tracker).
        early: the project's early-run scheduler.
        current: ``svc -> Predictor`` (default :func:`flows.predictions.current_predictor`).
        predict: ``(svc, examples, predictor) -> (Predictor, PrelabelPlan)`` (default
            :func:`flows.predictions.predict_examples`).
        budget_seconds: time a ``/predict`` request spends answering (:data:`PREDICT_BUDGET_SECONDS`).
        chunk_size: items per scoring call of a ``/predict`` request (:data:`PREDICT_CHUNK`).
    """

    def __init__(
        self,
        svc: Services,
        early: EarlyRuns,
        *,
        current: Callable[[Services], Any] | None = None,
        predict: Callable[..., tuple[Any, Any]] | None = None,
        budget_seconds: float = PREDICT_BUDGET_SECONDS,
        chunk_size: int = PREDICT_CHUNK,
    ) -> None:
        if current is None or predict is None:
            from flows.predictions import current_predictor, predict_examples

            current = current or current_predictor
            predict = predict or predict_examples
        self.svc = svc
        self.early = early
        self._current = current
        self._predict = predict
        self._lock = threading.Lock()
        self._cached: tuple[float, Any] | None = None
        self.budget_seconds = budget_seconds
        self.chunk_size = max(1, int(chunk_size))

    @property
    def project(self) -> str:
        return self.svc.config.name

    @property
    def project_id(self) -> int:
        return self.svc.project_id

    def predictor(self, fresh: bool = False) -> Any:
        """The current predictor (cached :data:`PREDICTOR_TTL_SECONDS`)."""
        with self._lock:
            now = time.monotonic()
            if fresh or self._cached is None or now - self._cached[0] > PREDICTOR_TTL_SECONDS:
                self._cached = (now, self._current(self.svc))
            return self._cached[1]

    def check_project(self, value: Any) -> None:
        """Refuse a request about another project (a missing project id is accepted)."""
        pid = proto.project_id_of(value)
        if pid is not None and pid != self.project_id:
            raise BadRequest(
                f"this backend serves dataeff project {self.project!r} (Label Studio project {self.project_id}), "
                f"not Label Studio project {pid}; connect it to project {self.project_id} or start another "
                f"`dataeff ml-backend --project ...` for that project"
            )

    def health(self) -> dict:
        return {
            "status": "UP",
            "model_class": MODEL_CLASS,
            "project": self.project,
            "label_studio_project": self.svc.config.label_studio_project_id,
            "early_runs": self.early.status(),
        }

    def setup(self, payload: dict) -> dict:
        self.check_project(payload.get("project"))
        return {"model_version": self.predictor(fresh=True).model_version}

    def versions(self) -> dict:
        return {"versions": [self.predictor().model_version]}

    def predict(self, payload: dict) -> dict:
        """``/predict``: the current predictor's answers for the request's tasks, one prediction per task."""
        self.check_project(payload.get("project"))
        tasks = payload.get("tasks") or []
        if not isinstance(tasks, list):
            raise BadRequest("/predict: 'tasks' must be a list of Label Studio tasks")
        label_config = payload.get("label_config") or self.svc.ls.project_info(self.project_id)["label_config"]
        predictor = self.predictor()
        examples = proto.task_examples(tasks)
        started = time.monotonic()
        answers: dict = {}
        reached = 0
        reasons: list[str] = []
        last = 0.0
        while reached < len(examples):
            elapsed = time.monotonic() - started
            if reached and elapsed + last > self.budget_seconds:  # the next chunk would end past the budget
                break
            chunk = examples[reached : reached + self.chunk_size]
            t0 = time.monotonic()
            predictor, plan = self._predict(self.svc, chunk, predictor)
            last = time.monotonic() - t0
            answers.update(plan.answers)
            reasons.append(str(plan.reason))
            reached += len(chunk)
        later = [str(e.id) for e in examples[reached:]]
        if examples:
            log.info(
                "%s: /predict %d task(s), %d dataeff item(s), %d answered with %s in %.1f s (%s)%s",
                self.project,
                len(tasks),
                len(examples),
                len(answers),
                predictor.model_version,
                time.monotonic() - started,
                "; ".join(dict.fromkeys(reasons)),
                f"; {len(later)} item(s) not reached within the {self.budget_seconds:.0f} s budget get no "
                "prediction now: 'Retrieve predictions' again asks for them"
                if later
                else "",
            )
        results = proto.prediction_results(
            tasks, answers, label_config, predictor.model_version, self.project_id, later=later
        )
        return {"results": results, "model_version": predictor.model_version}

    def webhook(self, payload: Any) -> tuple[int, dict]:
        """``/webhook``: schedule an early loop run for the trigger actions (201), acknowledge the rest (200)."""
        event = proto.parse_event(payload)
        if not event.triggers:
            return 200, {"status": "ignored", "action": event.action}
        if event.project_id is not None and event.project_id != self.project_id:
            return 200, {"status": "ignored", "action": event.action, "reason": "another project"}
        answer = self.early.request(event.action)
        return 201, {"status": answer["status"], "action": event.action, "mode": answer["mode"]}


def create_app(backend: Backend) -> FastAPI:
    """The FastAPI application serving ``backend``."""
    app = FastAPI(
        title=f"dataeff ML backend ({backend.project})",
        description="Label Studio ML-backend protocol: /health, /setup, /predict, /webhook",
        docs_url=None,
        redoc_url=None,
    )

    def error(status: int, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"status": "error", "error": str(exc)})

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @app.get("/")
    @app.get("/health")
    async def health() -> dict:
        return backend.health()

    @app.post("/setup")
    def setup(payload: dict[str, Any]) -> Any:  # sync: runs in the thread pool (MLflow may be slow)
        try:
            return backend.setup(payload)
        except BadRequest as exc:
            return error(400, exc)
        except Exception as exc:  # noqa: BLE001 - Label Studio shows the backend as "Error"
            log.exception("%s: /setup failed", backend.project)
            return error(500, exc)

    @app.post("/predict")
    def predict(payload: dict[str, Any]) -> Any:
        try:
            return backend.predict(payload)
        except BadRequest as exc:
            return error(400, exc)
        except Exception as exc:  # noqa: BLE001 - Label Studio logs it and stores nothing
            log.exception("%s: /predict failed", backend.project)
            return error(500, exc)

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:  # async and non-blocking: Label Studio waits 1 s
        status, content = backend.webhook(await body(request))
        return JSONResponse(status_code=status, content=content)

    @app.post("/train")
    async def train(request: Request) -> JSONResponse:
        data = await body(request)
        status, content = backend.webhook({"action": "START_TRAINING", "project": data.get("project")})
        return JSONResponse(status_code=status, content=content)

    @app.get("/versions")
    def versions() -> Any:
        try:
            return backend.versions()
        except Exception as exc:  # noqa: BLE001
            return error(500, exc)

    @app.get("/metrics")
    async def metrics() -> dict:
        return {}

    return app


class BackendServer:
    """Serve an app with uvicorn in a background thread (the CLI's foreground and the tests).

    Args:
        app: the ASGI application.
        host, port: where to listen.
        log_level: uvicorn's log level.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 9090, log_level: str = "warning") -> None:
        import copy

        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        log_config = copy.deepcopy(LOGGING_CONFIG)
        log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout carries the command's JSON only
        self.host, self.port = host, port
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=log_config)
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackendServer:
        self._thread = threading.Thread(target=self._server.run, name="ml-backend", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise DataEffError(
                    f"the ML backend could not listen on {self.host}:{self.port} (port taken?); pick another --port"
                )
            if time.monotonic() > deadline:
                raise DataEffError(f"the ML backend did not start on {self.host}:{self.port} within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in the main thread raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> BackendServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_backend(project: str, mode: str = "auto", budget_seconds: float | None = None) -> Backend:
    """The backend of a saved project, its services checked first (a user error is one ``error:`` line);
    ``budget_seconds`` of a ``/predict`` request (``None``: :data:`PREDICT_BUDGET_SECONDS`)."""
    from dataeff.project import ProjectConfig
    from flows.services import preflight

    if budget_seconds is not None and not budget_seconds > 0:
        raise DataEffError(f"--predict-budget {budget_seconds}: give a positive number of seconds, e.g. 60")
    config = ProjectConfig.load(project)
    svc = preflight(config, bootstrapped=False)
    budget = PREDICT_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    return Backend(svc, EarlyRuns(config.name, mode=mode), budget_seconds=budget)


def run(args: Any) -> int:
    """The ``dataeff ml-backend`` command: serve until Ctrl-C (with ``--connect``, connect it first)."""
    import json
    import sys

    from flows.runtime_env import configure_runtime

    configure_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend = open_backend(args.project, mode=args.early_runs, budget_seconds=args.predict_budget)
    predictor = backend.predictor(fresh=True)  # MLflow and the adapters folder read once before serving
    server = BackendServer(create_app(backend), host=args.host, port=args.port, log_level="info")
    url = (args.url or server.url).rstrip("/")
    server.start()
    out: dict[str, Any] = {
        "project": backend.project,
        "label_studio_project": backend.project_id,
        "url": url,
        "model_version": predictor.model_version,
        "early_runs": args.early_runs,
    }
    try:
        if args.connect:
            info = proto.connect_backend(
                backend.svc.ls, backend.project_id, url, title=args.title, description="dataeff ML backend"
            )
            hooks = proto.backend_webhooks(backend.svc.ls, backend.project_id, url)
            out["connected"] = {
                "ml_backend_id": info.id,
                "state": info.readable_state or info.state,
                "model_version": info.model_version,
                "webhook": bool(hooks),
            }
        print(json.dumps(out, indent=2), flush=True)
        print(f"serving {backend.project} at {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        still = backend.early.close()
        if still is not None:
            print(
                f"an early loop run (pid {still}) is still running and finishes on its own (`kill {still}` stops it; "
                "an interrupted iteration is redone by the next one)",
                file=sys.stderr,
            )
    return 0
