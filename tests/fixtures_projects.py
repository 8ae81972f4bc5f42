"""Project fixture: a real annotation project (Label Studio server, SQLite MLflow, Prefect harness, tiny model).

``flow_project`` yields ``(config, gold, home)``: a created (not bootstrapped) project of 60 yes/no
items on the session's Label Studio, its config saved under ``home`` (= ``$DATAEFF_HOME``).
Helpers: :func:`services`, :func:`annotator` (a simulated annotator that labels what is requested),
:func:`run_count`.
"""

from __future__ import annotations

import uuid

import ls_testing
import pytest

from dataeff.data import Example, TaskSpec
from dataeff.project import ProjectConfig

LABELS = ("yes", "no")
SENTENCES = [
    "the quick brown fox jumps",
    "play some jazz music please",
    "what is the weather like tomorrow",
    "wake me up at seven",
    "the lazy dog sleeps",
    "book a flight to paris",
]


def pool_of(n: int) -> tuple[list[Example], dict[str, str]]:
    pool, gold = [], {}
    for i in range(n):
        item = f"q{i:03d}"
        pool.append(
            Example(prompt=f"Question: Is the following sentence plausible? {SENTENCES[i % 6]} {i}. Answer:", id=item)
        )
        gold[item] = LABELS[(i * 7 + i // 6) % 2]
    return pool, gold


@pytest.fixture
def make_project(label_studio, prefect_harness, tiny_model_dir, tmp_path, monkeypatch):
    """``make_project(pool, prefix) -> (config, home)``: a created project on the session's Label Studio
    (tiny model, SQLite MLflow, ``$DATAEFF_HOME`` = ``home``), deleted from Label Studio afterwards."""
    from flows.project import create_project
    from integrations.label_studio import LabelStudioClient

    monkeypatch.setenv("DATAEFF_TEST_LS_TOKEN", label_studio.token)
    home = tmp_path / "home"
    monkeypatch.setenv("DATAEFF_HOME", str(home))
    made: list[ProjectConfig] = []

    def make(pool: list[Example], prefix: str = "flow") -> tuple[ProjectConfig, object]:
        cfg = ProjectConfig(
            name=f"{prefix}-{uuid.uuid4().hex[:8]}",
            task=TaskSpec(name="plausible", labels=LABELS),
            model=str(tiny_model_dir),
            budgets=(0, 10, 20),
            label_cap=5000,
            low_confidence_k=4,
            eval_size=8,
            batch_min=5,
            batch_max=10,
            coslow_draws=1,
            max_new_tokens=4,
            label_studio_url=label_studio.url,
            label_studio_token_env="DATAEFF_TEST_LS_TOKEN",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            finetune={"epochs": 1, "batch_size": 8, "max_length": 48, "eval_batch_size": 8, "max_new_tokens": 4},
        )
        created = create_project(cfg, pool)
        assert created["imported"] == len(pool)
        again = create_project(ProjectConfig.load(cfg.name), pool)  # idempotent: nothing imported twice
        assert again["imported"] == 0 and again["already_there"] == len(pool)
        made.append(ProjectConfig.load(cfg.name))
        return made[-1], home

    yield make
    for cfg in made:
        try:
            ls_testing.delete_project(
                LabelStudioClient(label_studio.url, label_studio.token), cfg.label_studio_project_id
            )
        except Exception:  # noqa: BLE001 - best-effort clean-up
            pass


@pytest.fixture
def flow_project(make_project):
    """A created (not yet bootstrapped) project of 60 yes/no items; yields ``(config, gold, home)``."""
    pool, gold = pool_of(60)
    cfg, home = make_project(pool)
    return cfg, gold, home


def services(cfg):
    from flows.services import open_services

    return open_services(cfg)


def annotator(cfg, gold):
    from flows.demo import SimulatedAnnotator

    svc = services(cfg)
    return SimulatedAnnotator(svc.ls, cfg.label_studio_project_id, gold, LABELS)


def run_count(cfg) -> int:
    return len(services(cfg).tracker.list_runs(cfg.name, include_unfinished=True))
