"""Label Studio fixtures: ONE real server per test session (SQLite, free port, tmp data dir).

``label_studio`` starts the server on first use (~30-60 s of migrations on 2 cores) and stops it
at the end of the session. A start-up failure raises, so the tests that need it fail loudly
(never skip). ``ls_client`` talks to it; ``ls_project`` gives each test a fresh project.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import ls_testing
import pytest

from dataeff.data import TaskSpec

LS_TEST_TASK = TaskSpec(
    name="sentiment", labels=("positive", "negative", "neutral"), instructions="Pick the sentiment."
)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A running :class:`integrations.ls_server.LabelStudioServer` (url, token, stop/start)."""
    from integrations.ls_server import LabelStudioServer, free_port

    server = LabelStudioServer(port=free_port(), data_dir=tmp_path_factory.mktemp("label-studio"))
    server.start(timeout=240)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio):
    """A :class:`integrations.label_studio.LabelStudioClient` for the session server."""
    from integrations.label_studio import LabelStudioClient

    return LabelStudioClient(label_studio.url, label_studio.token, retries=2, backoff=0.2)


@dataclass(frozen=True)
class LSProject:
    """A fresh project for one test: ``client``, ``project_id``, ``task`` (its TaskSpec), ``title``."""

    client: object
    project_id: int
    task: TaskSpec
    title: str


@pytest.fixture
def ls_project(ls_client, request):
    """A new choice project (labels positive/negative/neutral), deleted after the test."""
    title = f"t-{request.node.name[5:35]}-{uuid.uuid4().hex[:8]}"  # <= 50 chars
    project_id = ls_client.ensure_project(title, LS_TEST_TASK, description="Label carefully.")
    yield LSProject(client=ls_client, project_id=project_id, task=LS_TEST_TASK, title=title)
    try:
        ls_testing.delete_project(ls_client, project_id)
    except Exception:  # the server may be down if the test stopped it; the data dir is tmp anyway
        pass
