"""Label Studio adapter and server lifecycle, against a REAL Label Studio server (session fixture)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import httpx
import ls_testing
import pytest
from fixtures_label_studio import LS_TEST_TASK

from dataeff.data import Example, TaskSpec
from dataeff.errors import DataError
from integrations.label_studio import (
    PRIORITY_VIEW_COLUMNS,
    PRIORITY_VIEW_TITLE,
    STATUS_MARKER,
    Cursor,
    InvalidLabel,
    InvalidTask,
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioUnavailable,
    ProjectNotFound,
    label_config,
)
from integrations.ls_server import ROOT, LabelStudioServer, LabelStudioServerError
from integrations.ls_status import DONE_HEADLINE, LEGACY_STATUS_MARKER, compose, split_description

pytestmark = pytest.mark.slow


def _pool(n: int, prefix: str = "item") -> list[Example]:
    return [Example(prompt=f"text number {i}", id=f"{prefix}-{i}") for i in range(n)]


# ----------------------------------------------------------------------------- pure logic


def test_label_config_choices_and_free_text():
    xml = label_config(TaskSpec(name="t", labels=("yes", 'say "no" & <stop>'), instructions="Answer it."))
    root = ET.fromstring(xml)
    assert [c.attrib["value"] for c in root.iter("Choice")] == ["yes", 'say "no" & <stop>']
    assert root.find("Text").attrib == {"name": "prompt", "value": "$prompt"}
    assert root.find("Choices").attrib["name"] == "answer"
    assert root.find("Header").attrib["value"] == "Answer it."
    free = ET.fromstring(label_config(TaskSpec(name="t", metric="f1")))
    assert free.find("TextArea").attrib["name"] == "answer" and free.find("Choices") is None


def test_cursor_json_roundtrip_and_bad_cursor():
    cur = Cursor(updated_at="2026-01-01T00:00:00Z", seen={"a": (3, "2026-01-01T00:00:00Z")})
    assert Cursor.from_json(cur.to_json()) == cur
    with pytest.raises(Exception, match="since=None"):
        Cursor.from_json("{not json")


def test_server_token_must_be_hex_and_match_data_dir(tmp_path):
    with pytest.raises(LabelStudioServerError, match="40 lowercase hex"):
        LabelStudioServer(port=1, data_dir=tmp_path / "a", token="secret")
    first = LabelStudioServer(port=1, data_dir=tmp_path / "b")
    assert stat.S_IMODE(os.stat(first.credentials_file).st_mode) == 0o600
    assert LabelStudioServer(port=1, data_dir=tmp_path / "b").token == first.token  # stored, reused
    with pytest.raises(LabelStudioServerError, match="another token"):
        LabelStudioServer(port=1, data_dir=tmp_path / "b", token="a" * 40)


# ----------------------------------------------------------------------------- server lifecycle


def test_server_is_up_reused_and_keeps_its_secret(label_studio):
    assert httpx.get(f"{label_studio.url}/health", timeout=5).status_code == 200
    assert label_studio.token not in repr(label_studio) and "***" in repr(label_studio)
    assert label_studio.password not in repr(label_studio)
    pid = label_studio.pid()
    # A second object on the same data dir + port reuses the running server, and leaving its
    # context does not stop a server it did not start.
    with LabelStudioServer(port=label_studio.port, data_dir=label_studio.data_dir) as again:
        assert again.pid() == pid and again.token == label_studio.token
    assert label_studio.healthy() and label_studio.pid() == pid
    # The server's own log never shows the token.
    assert label_studio.token not in label_studio.log_file.read_text(errors="replace")


def test_cli_install_is_a_noop_and_status_hides_the_token(label_studio):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "label-studio", "install"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0 and "already installed" in out.stdout
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "label-studio",
            "status",
            "--port",
            str(label_studio.port),
            "--data-dir",
            str(label_studio.data_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["healthy"] is True and status["pid"] == label_studio.pid()
    assert label_studio.token not in out.stdout + out.stderr


# ----------------------------------------------------------------------------- projects and import


def test_ensure_project_is_idempotent_and_checks_labels(ls_project):
    client = ls_project.client
    assert client.ensure_project(ls_project.title, LS_TEST_TASK) == ls_project.project_id
    other = TaskSpec(name="x", labels=("a", "b"))
    with pytest.raises(LabelStudioError, match="labels"):
        client.ensure_project(ls_project.title, other)
    # "contains" search on the server must not make a prefix title match.
    assert client.find_project(ls_project.title[:-2]) is None
    with pytest.raises(DataError, match="3 to 50"):
        client.ensure_project("x" * 51, LS_TEST_TASK)


def test_import_pool_is_idempotent_and_reports_bad_items(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    pool = _pool(6) + [Example(prompt="   ", id="empty-one")]
    report = client.import_pool(pid, pool, batch_size=4)  # two batches
    assert (report.created, report.skipped) == (6, 0)
    assert (
        len(report.invalid) == 1
        and "empty-one" in str(report.invalid[0])
        and isinstance(report.invalid[0], InvalidTask)
    )
    again = client.import_pool(pid, pool + _pool(2, prefix="new"))
    assert (again.created, again.skipped) == (2, 6)
    tasks = client.tasks(pid)
    assert sorted(t.dataeff_id for t in tasks) == sorted([f"item-{i}" for i in range(6)] + ["new-0", "new-1"])
    assert all(t.data["dataeff_priority"] == 0 for t in tasks)


# ----------------------------------------------------------------------------- pulling labels


def test_pull_new_edited_deleted_cancelled_and_two_annotators(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    client.import_pool(pid, _pool(8))
    second = ls_testing.ensure_user(client, "second.annotator@example.com")
    a0 = ls_testing.create_annotation(client, pid, "item-0", "positive")
    a1 = ls_testing.create_annotation(client, pid, "item-1", "negative")
    ls_testing.create_annotation(client, pid, "item-2", "neutral")
    ls_testing.create_annotation(client, pid, "item-3", "positive", cancelled=True)  # skipped: ignored

    first = client.pull_labeled(pid, since=None)
    assert {e.id: e.answer for e in first.examples} == {"item-0": "positive", "item-1": "negative", "item-2": "neutral"}
    assert set(first.changed_ids) == {"item-0", "item-1", "item-2"} and first.deleted_ids == () and first.errors == ()
    ex0 = next(e for e in first.examples if e.id == "item-0")
    assert ex0.prompt == "text number 0"
    assert ex0.meta["annotation_id"] == a0 and ex0.meta["dataeff_id"] == "item-0"
    assert ex0.meta["annotator"] and ex0.meta["task_id"] and ex0.meta["updated_at"]
    cursor1 = Cursor.from_json(first.cursor.to_json())  # what the loop would persist
    frozen = first.cursor.to_json()

    nothing = client.pull_labeled(pid, since=cursor1)
    assert not nothing.has_changes and len(nothing.examples) == 3

    # Edit, delete, and several annotators.
    time.sleep(0.01)
    ls_testing.update_annotation(client, pid, a1, "positive")
    ls_testing.delete_annotation(client, a0)
    ls_testing.create_annotation(client, pid, "item-4", "negative")
    ls_testing.create_annotation(client, pid, "item-4", "neutral", annotator_id=second)  # later one wins
    ls_testing.create_annotation(client, pid, "item-5", "positive", annotator_id=second, ground_truth=True)
    ls_testing.create_annotation(client, pid, "item-5", "negative")  # later, but ground truth wins
    ls_testing.create_annotation(client, pid, "item-6", "negative", cancelled=True)
    ls_testing.create_annotation(client, pid, "item-6", "neutral", annotator_id=second)  # cancelled one ignored

    second_pull = client.pull_labeled(pid, since=cursor1)
    answers = {e.id: e.answer for e in second_pull.examples}
    assert answers == {
        "item-1": "positive",
        "item-2": "neutral",
        "item-4": "neutral",
        "item-5": "positive",
        "item-6": "neutral",
    }
    assert set(second_pull.changed_ids) == {"item-1", "item-4", "item-5", "item-6"}
    assert second_pull.deleted_ids == ("item-0",)
    by_id = {e.id: e for e in second_pull.examples}
    assert by_id["item-4"].meta["annotator"] == "second.annotator@example.com"
    assert by_id["item-5"].meta["ground_truth"] is True
    assert second_pull.cursor.updated_at >= cursor1.updated_at
    assert first.cursor.to_json() == frozen  # pure: the old cursor was not mutated


def test_pull_reports_malformed_annotations_and_goes_on(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    client.import_pool(pid, _pool(3))
    ls_testing.create_annotation(client, pid, "item-0", "positive")
    task_id = {t.dataeff_id: t.task_id for t in client.tasks(pid)}["item-1"]
    # Written behind the adapter's back (another tool, an old label set): a label not in the config.
    client._sdk.annotations.create(
        id=task_id,
        result=[{"from_name": "answer", "to_name": "prompt", "type": "choices", "value": {"choices": ["maybe"]}}],
    )
    result = client.pull_labeled(pid)
    assert [e.id for e in result.examples] == ["item-0"]
    assert len(result.errors) == 1 and result.errors[0].dataeff_id == "item-1" and "maybe" in result.errors[0].reason


def test_pull_1000_labeled_tasks_timing(ls_project, record_property):
    client, pid = ls_project.client, ls_project.project_id
    # Bulk set-up through the import endpoint (tasks with their annotations): ~1 s instead of ~160 s.
    rows = [
        {
            "data": {"prompt": f"text {i}", "dataeff_id": f"bulk-{i}", "dataeff_priority": 0},
            "annotations": [
                {
                    "result": [
                        {
                            "from_name": "answer",
                            "to_name": "prompt",
                            "type": "choices",
                            "value": {"choices": [("positive", "negative")[i % 2]]},
                        }
                    ]
                }
            ],
        }
        for i in range(1000)
    ]
    client._sdk.projects.import_tasks(id=pid, request=rows)
    t0 = time.perf_counter()
    result = client.pull_labeled(pid)
    first_s = time.perf_counter() - t0
    assert len(result.examples) == 1000 and set(result.changed_ids) == {f"bulk-{i}" for i in range(1000)}
    assert {e.answer for e in result.examples} == {"positive", "negative"}
    record_property("pull_1000_s", round(first_s, 2))
    print(f"\npull of 1,000 labeled tasks: {first_s:.2f} s")
    assert first_s < 60


# ----------------------------------------------------------------------------- priorities, predictions, status


def test_priorities_and_sorted_view(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    client.import_pool(pid, _pool(6))
    view = client.ensure_priority_view(pid)
    assert client.ensure_priority_view(pid) == view  # once
    from dataeff.queue import priorities

    assert client.push_priorities(pid, priorities(["item-4", "item-1", "item-5"], 100)) == 3
    ordered = client.tasks(pid, view=view)
    assert [t.dataeff_id for t in ordered[:3]] == ["item-4", "item-1", "item-5"]
    assert [t.data["dataeff_priority"] for t in ordered[:3]] == [103, 102, 101]
    assert ordered[0].data["prompt"] == "text number 4"  # other data fields kept
    # A later batch on a higher base goes above what is queued; re-pushing the same values touches nothing.
    client.push_priorities(pid, priorities(["item-0", "item-2"], 103))
    assert [t.dataeff_id for t in client.tasks(pid, view=view)[:4]] == ["item-0", "item-2", "item-4", "item-1"]
    assert client.push_priorities(pid, {"item-0": 105, "item-2": 104}) == 0
    with pytest.raises(InvalidTask, match="nope"):
        client.push_priorities(pid, {"nope": 1})


def _view_data(client, pid, view_id) -> dict:
    return dict(client._call("read a view", lambda: client._sdk.views.get(str(view_id))).data or {})


def _dm_rows(client, pid, view_id) -> list[dict]:
    """The task rows the Data Manager shows in a tab (the UI's own request: computed columns included)."""

    def fetch():
        response = client._sdk._client_wrapper.httpx_client.request(
            "api/tasks/", method="GET", params={"project": pid, "view": view_id, "page_size": 100}
        )
        response.raise_for_status()
        return response.json()["tasks"]

    return client._call("list the tab's tasks", fetch)


HIDDEN_BY_DATAEFF = {
    "tasks:inner_id",  # Inner ID
    "tasks:file_upload",  # Upload filename
    "tasks:storage_filename",  # Storage filename
    "tasks:draft_exists",  # Drafts
    "tasks:avg_lead_time",  # Lead Time
    "tasks:annotations_ids",
    "tasks:predictions_model_versions",
    "tasks:created_at",
    "tasks:updated_at",
    "tasks:updated_by",
    "tasks:data.dataeff_id",
}


def test_priority_view_shows_the_annotators_columns_and_repairs_an_old_view(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    client.import_pool(pid, _pool(4))
    # A tab as an older dataeff made it: sorted, but no hiddenColumns (Label Studio then leaves the
    # computed columns blank and shows Inner ID, filenames, drafts, lead time...).
    old = client._sdk.views.create(
        project=pid,
        data={
            "title": PRIORITY_VIEW_TITLE,
            "ordering": ["-tasks:data.dataeff_priority"],
            "filters": {"conjunction": "and", "items": []},
        },
    )
    client.push_predictions(pid, {"item-1": ("positive", 0.8), "item-2": ("negative", 0.3)}, model_version="m1")
    client.create_annotations(pid, {"item-2": "neutral"})
    client.push_priorities(pid, {"item-2": 5, "item-1": 4})
    blank = {r["data"]["dataeff_id"]: r for r in _dm_rows(client, pid, old.id)}
    assert blank["item-1"].get("predictions_score") is None  # the measured defect

    assert client.ensure_priority_view(pid) == old.id  # updated in place, not a second tab
    data = _view_data(client, pid, old.id)
    hidden = data["hiddenColumns"]
    assert not set(PRIORITY_VIEW_COLUMNS) & set(hidden["explore"])
    assert set(PRIORITY_VIEW_COLUMNS) == {
        "tasks:id",
        "tasks:completed_at",
        "tasks:annotators",
        "tasks:annotations_results",
        "tasks:predictions_score",
        "tasks:predictions_results",
        "tasks:data.dataeff_priority",
        "tasks:data.prompt",
    }
    assert HIDDEN_BY_DATAEFF <= set(hidden["explore"]) and HIDDEN_BY_DATAEFF <= set(hidden["labeling"])
    assert data["ordering"] == ["-tasks:data.dataeff_priority"] and data["title"] == PRIORITY_VIEW_TITLE
    views = client._call("list views", lambda: list(client._sdk.views.list(project=pid)))
    assert [v.id for v in views if (v.data or {}).get("title") == PRIORITY_VIEW_TITLE] == [old.id]

    rows = _dm_rows(client, pid, old.id)  # now Label Studio fills the computed columns
    assert [r["data"]["dataeff_id"] for r in rows[:2]] == ["item-2", "item-1"]
    by_id = {r["data"]["dataeff_id"]: r for r in rows}
    assert by_id["item-2"]["completed_at"] and by_id["item-2"]["annotators"]
    assert "neutral" in by_id["item-2"]["annotations_results"]
    assert by_id["item-1"]["predictions_score"] == pytest.approx(0.8)
    assert "positive" in by_id["item-1"]["predictions_results"]
    assert not by_id["item-1"]["completed_at"]

    # Idempotent; a column someone hid by hand stays hidden, a required one comes back, the order too.
    assert client.ensure_priority_view(pid) == old.id and _view_data(client, pid, old.id) == data
    hand = {**data, "ordering": ["tasks:id"]}
    hand["hiddenColumns"] = {
        "explore": [c for c in hidden["explore"] if c != "tasks:inner_id"] + ["tasks:annotators"],
        "labeling": hidden["labeling"],
    }
    client._sdk.views.update(str(old.id), project=pid, data=hand)
    client.ensure_priority_view(pid)
    fixed = _view_data(client, pid, old.id)
    assert fixed["ordering"] == ["-tasks:data.dataeff_priority"]
    assert "tasks:annotators" not in fixed["hiddenColumns"]["explore"]
    assert "tasks:inner_id" not in fixed["hiddenColumns"]["explore"]  # shown by hand: kept


def test_new_priority_view_has_its_columns_before_any_import(ls_client):
    title = f"t-view-empty-{os.getpid()}-{int(time.time())}"[:50]
    pid = ls_client.ensure_project(title, LS_TEST_TASK)
    try:
        view = ls_client.ensure_priority_view(pid)
        hidden = _view_data(ls_client, pid, view)["hiddenColumns"]
        assert {"tasks:inner_id", "tasks:data.dataeff_id", "tasks:avg_lead_time"} <= set(hidden["explore"])
        assert not set(PRIORITY_VIEW_COLUMNS) & set(hidden["explore"])
    finally:
        ls_testing.delete_project(ls_client, pid)


def test_predictions_with_model_version_are_idempotent(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    client.import_pool(pid, _pool(3))
    preds = {"item-0": ("positive", 0.91), "item-2": ("neutral", 0.35)}
    assert client.push_predictions(pid, preds, model_version="smollm2-r1") == 2
    assert client.push_predictions(pid, preds, model_version="smollm2-r1") == 0  # no duplicates
    assert client.project_info(pid)["model_version"] == "smollm2-r1"
    seen = ls_testing.predictions(client, pid)
    assert len(seen) == 2 and {p["model_version"] for p in seen} == {"smollm2-r1"}
    assert sorted(round(p["score"], 2) for p in seen) == [0.35, 0.91]
    with pytest.raises(InvalidLabel, match="maybe"):
        client.push_predictions(pid, {"item-1": ("maybe", 0.5)}, model_version="smollm2-r2")
    assert len(ls_testing.predictions(client, pid)) == 2  # nothing pushed
    assert client.push_predictions(pid, {"item-1": ("negative", 0.5)}, model_version="smollm2-r2") == 1
    assert client.project_info(pid)["model_version"] == "smollm2-r2"


def test_status_block_round_trips_and_keeps_what_people_wrote():
    for text, done in [("about 300 more labels", None), ("stop: the cap is reached", None), ("", True)]:
        texts = compose(text, "Label carefully.", "<p>Be kind.</p>", done)
        assert split_description(texts.description) == (text, "Label carefully.")
        assert texts.instructions.endswith(f"<p>{STATUS_MARKER}</p><p>Be kind.</p>")
        again = compose(text, texts.description, texts.instructions, done)
        assert again == texts  # people's text is not duplicated
    legacy = f"Label carefully.\n\n{LEGACY_STATUS_MARKER}\nold status"
    assert split_description(legacy) == ("old status", "Label carefully.")
    assert compose("new", legacy, "").description.endswith(f"{STATUS_MARKER}\nLabel carefully.")
    assert compose("stop: enough", "", "").description.startswith(DONE_HEADLINE)
    assert compose("stop: enough", "", "", done=False).description.startswith("Status: stop: enough")


def test_status_is_shown_on_top_and_in_the_labeling_instructions(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    assert client.set_status(pid, "about 420 more labels expected") is True
    assert client.set_status(pid, "about 300 more labels expected") is True
    info = client.project_info(pid)
    description = info["description"]
    lines = description.splitlines()
    assert lines[0] == "Status: about 300 more labels expected"
    assert "'Label Tasks As Displayed'" in lines[1] and "'dataeff priority'" in lines[1]
    assert lines[2] == STATUS_MARKER and lines[3] == "Label carefully."  # people's text kept, once
    assert description.count(STATUS_MARKER) == 1 and "420" not in description
    assert client.get_status(pid) == "about 300 more labels expected"
    assert info["show_instruction"] is True
    instructions = info["expert_instruction"]
    assert instructions.startswith("<h3>dataeff: what to label now</h3><p><b>about 300 more labels expected</b></p>")
    assert "<b>Label Tasks As Displayed</b>" in instructions and "model's guess" in instructions
    assert info["sampling"] == "Sequential sampling"  # no Community sampling follows a field: left as it is
    assert client.set_status(pid, "about 300 more labels expected") is False  # nothing to write

    # Instructions someone wrote in Label Studio (below the marker) survive the next update.
    client._sdk.projects.update(id=pid, expert_instruction=instructions + "<p>Ask Ana when unsure &amp; stuck.</p>")
    client.set_status(pid, "stop: 80% of the achievable gain is reached at 512 labels.")
    info = client.project_info(pid)
    assert info["description"].startswith(f"{DONE_HEADLINE}\nWhy: stop: 80%")
    assert (
        info["expert_instruction"].count("Ask Ana") == 1
        and "Label Tasks As Displayed" not in info["expert_instruction"]
    )
    assert client.get_status(pid) == "stop: 80% of the achievable gain is reached at 512 labels."


def test_status_converts_an_older_dataeff_description(ls_project):
    client, pid = ls_project.client, ls_project.project_id
    client._sdk.projects.update(id=pid, description=f"Label carefully.\n\n{LEGACY_STATUS_MARKER}\nold status")
    assert client.get_status(pid) == "old status"
    client.set_status(pid, "dataeff needs 12 more of the 32 hard examples first")
    description = client.project_info(pid)["description"]
    assert description.startswith("Status: dataeff needs 12 more")
    assert LEGACY_STATUS_MARKER not in description and description.endswith(f"{STATUS_MARKER}\nLabel carefully.")


# ----------------------------------------------------------------------------- errors


def test_bad_token_missing_project_invalid_label(label_studio, ls_project):
    bad = LabelStudioClient(label_studio.url, "0" * 40, retries=0)
    with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_API_KEY"):
        bad.pull_labeled(ls_project.project_id)
    client = ls_project.client
    with pytest.raises(ProjectNotFound, match="987654"):
        client.pull_labeled(987654)
    with pytest.raises(ProjectNotFound):
        client.import_pool(987654, _pool(1))
    client.import_pool(ls_project.project_id, _pool(1))
    with pytest.raises(InvalidLabel, match="'maybe' is not in"):
        ls_testing.create_annotation(client, ls_project.project_id, "item-0", "maybe")
    with pytest.raises(InvalidTask, match="item-77"):
        ls_testing.create_annotation(client, ls_project.project_id, "item-77", "positive")


def test_no_token_in_logs_errors_or_reprs(label_studio, ls_project, caplog):
    caplog.set_level(logging.DEBUG)
    client = LabelStudioClient(label_studio.url, label_studio.token, retries=1, backoff=0.05)
    client.import_pool(ls_project.project_id, _pool(2))
    ls_testing.create_annotation(client, ls_project.project_id, "item-0", "positive")
    client.pull_labeled(ls_project.project_id)
    down = LabelStudioClient("http://127.0.0.1:9", label_studio.token, retries=1, backoff=0.05)
    with pytest.raises(LabelStudioUnavailable) as info:
        down.pull_labeled(1)
    with pytest.raises(LabelStudioAuthError) as auth:
        LabelStudioClient(label_studio.url, "f" * 40, retries=0).pull_labeled(ls_project.project_id)
    assert "retry" in caplog.text  # the retry warnings were logged...
    for text in (caplog.text, repr(client), repr(down), repr(label_studio), str(info.value), str(auth.value)):
        assert label_studio.token not in text  # ...without the token
        assert label_studio.password not in text


# ----------------------------------------------------------------------------- outage


def test_server_stopped_mid_pull_loses_nothing(label_studio, ls_project):
    """Stop the shared server between two pages of a pull, then restart it."""
    pid = ls_project.project_id
    setup = ls_project.client
    setup.import_pool(pid, _pool(6))
    for i in range(3):
        ls_testing.create_annotation(setup, pid, f"item-{i}", "positive")
    cursor = setup.pull_labeled(pid).cursor
    for i in range(3, 6):
        ls_testing.create_annotation(setup, pid, f"item-{i}", "negative")
    before = cursor.to_json()

    stopped = []

    def stop_before_page_two(request: httpx.Request) -> None:
        if request.url.path.startswith("/api/tasks") and request.url.params.get("page") == "2" and not stopped:
            label_studio.stop()
            stopped.append(time.monotonic())

    hooked = httpx.Client(event_hooks={"request": [stop_before_page_two]}, timeout=10)
    client = LabelStudioClient(
        label_studio.url, label_studio.token, retries=2, backoff=0.2, page_size=2, httpx_client=hooked
    )
    try:
        with pytest.raises(LabelStudioUnavailable) as info:
            client.pull_labeled(pid, since=cursor)
        assert stopped, "the server was not stopped between pages"
        assert info.value.retryable is True
        assert cursor.to_json() == before  # the caller's cursor is untouched
    finally:
        t0 = time.monotonic()
        label_studio.start(timeout=120)
        print(f"\nrestart of the session server took {time.monotonic() - t0:.1f} s")
    after = LabelStudioClient(label_studio.url, label_studio.token, page_size=2).pull_labeled(pid, since=cursor)
    assert {e.id: e.answer for e in after.examples} == {
        f"item-{i}": ("positive" if i < 3 else "negative") for i in range(6)
    }
    assert set(after.changed_ids) == {"item-3", "item-4", "item-5"} and after.deleted_ids == ()


# ----------------------------------------------------------------------------- the bootstrap's queue


def test_bootstrap_queue_pushes_only_pre_annotations_that_help(ls_project):
    """flows.bootstrap's queue step against the real server: a degenerate guesser pushes nothing,
    otherwise only answers naming exactly one label; the status tells annotators what comes first."""
    from types import SimpleNamespace

    from dataeff.confidence import ConfidenceScore
    from dataeff.iteration import ROLE_EVAL, ROLE_LOWCONF
    from flows.bootstrap import _pre_annotations, queue

    client, pid = ls_project.client, ls_project.project_id
    client.import_pool(pid, _pool(12))
    cfg = SimpleNamespace(model="tiny-model", task=LS_TEST_TASK, seed=0)
    svc = SimpleNamespace(ls=client, project_id=pid, config=cfg)
    roles = {ROLE_LOWCONF: ["item-3", "item-4"], ROLE_EVAL: ["item-5", "item-6", "item-7"]}

    def scores(answers):
        return [ConfidenceScore(f"item-{i}", a, 0.1 * (i % 10), 2.0, 1) for i, a in enumerate(answers)]

    degenerate = _pre_annotations(cfg, scores(["positive"] * 11 + ["negative"]))  # 92% one of 3 labels
    assert not degenerate.push and not degenerate.answers and "degenerate guesser" in degenerate.reason
    queue.fn(svc, roles, dict(degenerate.answers))
    assert ls_testing.predictions(client, pid) == []
    assert client.get_status(pid).startswith("label the 2 hard examples first, then the 3 examples")
    # the priority tab: the hard examples, the eval split, then the rest in the order the loop will request them
    from dataeff.iteration import next_batch

    shown = [t.dataeff_id for t in client.tasks(pid, view=client.ensure_priority_view(pid))]
    rest = [f"item-{i}" for i in (0, 1, 2, 8, 9, 10, 11)]
    assert shown == ["item-3", "item-4", "item-5", "item-6", "item-7", *next_batch(rest, len(rest), seed=0)]

    mixed = ["positive", "Negative.", "neutral, positive", "I think positive", "", "neutral"] * 2
    plan = _pre_annotations(cfg, scores(mixed))
    assert plan.push and sorted(plan.unmatched) == sorted(f"item-{i}" for i in (2, 3, 4, 8, 9, 10))
    queue.fn(svc, roles, dict(plan.answers))
    pushed = {p["task_id"]: p for p in ls_testing.predictions(client, pid)}
    task_of = {t.dataeff_id: t.task_id for t in client.tasks(pid)}
    assert set(pushed) == {task_of[f"item-{i}"] for i in (0, 1, 5, 6, 7, 11)}
    assert pushed[task_of["item-1"]]["result"][0]["value"] == {"choices": ["negative"]}
    assert {p["model_version"] for p in pushed.values()} == {"dataeff-tiny-model"}
    assert client.project_info(pid)["model_version"] == "dataeff-tiny-model"
