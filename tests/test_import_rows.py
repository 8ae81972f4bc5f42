"""`dataeff project create` with bad rows: every bad row is named (line, id, why) and the good ones
imported; ``--strict`` imports nothing and names them all. Real Label Studio, real MLflow (SQLite),
the CLI called in-process."""

from __future__ import annotations

import json
import uuid

import ls_testing
import pytest

from app.cli import main
from dataeff.project import ProjectConfig


def _pool_file(path, n: int = 30, bad: dict[int, str] | None = None):
    """``n`` JSONL rows ``q01..qNN``; line numbers in ``bad`` get that raw text instead."""
    lines = [
        json.dumps({"id": f"q{i:02d}", "prompt": f"Is the sentence plausible? the lazy dog sleeps {i}. Answer:"})
        for i in range(1, n + 1)
    ]
    for lineno, text in (bad or {}).items():
        lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


BAD = {5: '{"id": "q05", "prompt": "unterminated', 21: '{"id": "q21", "text": "a prompt under the wrong key"}'}


@pytest.fixture
def cli_env(label_studio, tmp_path, monkeypatch):
    """Environment of a `dataeff project create` against the session's Label Studio; deletes the projects made."""
    from integrations.label_studio import LabelStudioClient

    monkeypatch.setenv("DATAEFF_TEST_LS_TOKEN", label_studio.token)
    monkeypatch.setenv("DATAEFF_HOME", str(tmp_path / "home"))
    client = LabelStudioClient(label_studio.url, label_studio.token)
    names: list[str] = []

    def argv(name: str, *extra: str) -> list[str]:
        names.append(name)
        return [
            "project",
            "create",
            "--name",
            name,
            "--label-studio-url",
            label_studio.url,
            "--token-env",
            "DATAEFF_TEST_LS_TOKEN",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            *extra,
        ]

    yield argv, client, tmp_path
    for name in names:
        pid = client.find_project(name)
        if pid is not None:
            ls_testing.delete_project(client, pid)


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def test_bad_rows_are_reported_and_the_good_ones_imported(cli_env, capsys):
    argv, client, tmp = cli_env
    pool = _pool_file(tmp / "pool.jsonl", bad=BAD)
    name = f"rows-{uuid.uuid4().hex[:8]}"
    code, out, err = _run(capsys, argv(name, "--data", str(pool)))
    assert code == 0
    assert out["imported"] == 28 and out["invalid"] == []
    rows = {r["line"]: r for r in out["rejected_rows"]}
    assert sorted(rows) == [5, 21]
    assert rows[5]["id"] is None and rows[5]["reason"].startswith("invalid JSON")
    assert rows[21]["id"] == "q21" and rows[21]["reason"].startswith("missing or empty 'prompt' field")
    assert all(r["file"] == str(pool) for r in rows.values())
    assert (
        f"skipped {pool}:5: invalid JSON" in err and f"skipped {pool}:21 (id 'q21'): missing or empty 'prompt'" in err
    )
    ids = {t.dataeff_id for t in client.tasks(out["label_studio_project_id"])}
    assert len(ids) == 28 and not ids & {"q05", "q21"}

    # Fixed rows arrive on the next run; nothing is imported twice.
    code, again, _ = _run(capsys, argv(name, "--data", str(_pool_file(tmp / "fixed.jsonl"))))
    assert code == 0 and again["imported"] == 2 and again["already_there"] == 28 and again["rejected_rows"] == []


def test_strict_imports_nothing_and_names_every_bad_row(cli_env, capsys):
    argv, client, tmp = cli_env
    pool = _pool_file(tmp / "pool.jsonl", bad=BAD)
    name = f"strict-{uuid.uuid4().hex[:8]}"
    code, out, err = _run(capsys, argv(name, "--data", str(pool), "--strict"))
    assert code == 2 and out is None and "Traceback" not in err
    assert err.startswith("error: --strict: 2 bad row(s), nothing imported")
    assert f"{pool}:5: invalid JSON" in err and f"{pool}:21 (id 'q21'): missing or empty 'prompt'" in err
    assert client.find_project(name) is None
    with pytest.raises(Exception, match="no config"):
        ProjectConfig.load(name)


def test_bad_rows_of_the_eval_file_are_reported_too(cli_env, capsys):
    argv, client, tmp = cli_env
    pool = _pool_file(tmp / "pool.jsonl", n=6)
    evals = tmp / "eval.jsonl"
    evals.write_text(
        "\n".join(
            [
                '{"id": "e1", "prompt": "Is the sentence plausible? the fox jumps. Answer:", "answer": "yes"}',
                '{"id": "e2", "prompt": "Is the sentence plausible? the dog flies. Answer:"}',
                '{"id": "e1", "prompt": "Is the sentence plausible? again. Answer:", "answer": "no"}',
                '{"id": "e3", "prompt": "Is the sentence plausible? the cat sleeps. Answer:", "answer": "yes"}',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    name = f"evalrows-{uuid.uuid4().hex[:8]}"
    code, out, err = _run(capsys, argv(name, "--data", str(pool), "--eval", str(evals)))
    assert code == 0 and out["imported"] == 6 + 2
    assert [(r["file"], r["line"], r["id"]) for r in out["rejected_rows"]] == [
        (str(evals), 2, "e2"),
        (str(evals), 3, "e1"),
    ]
    assert "missing or empty 'answer'" in out["rejected_rows"][0]["reason"]
    assert "duplicate id 'e1' (first on line 1)" in out["rejected_rows"][1]["reason"]
    assert ProjectConfig.load(name).fixed_eval_ids == ["e1", "e3"]
