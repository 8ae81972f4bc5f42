"""Predictions that help (issue 12): saved adapters, the predictor, and the loop's re-scoring of the queue.

Adapters on the tiny model; the loop against the real Label Studio server, MLflow (SQLite) and
Prefect's harness (fixtures_projects.make_project).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import ls_testing
import pytest
import torch
from fixtures_projects import annotator as _annotator
from fixtures_projects import pool_of
from fixtures_projects import services as _services

from dataeff.data import Example, TaskSpec
from dataeff.errors import DataError

TASK = TaskSpec(name="plausible", labels=("yes", "no"))
# Settings under which the tiny random model learns to answer a label from 10 examples (6 steps).
LEARNS = {"epochs": 6, "lr": 1e-2, "batch_size": 10, "r": 16, "alpha": 32, "max_length": 48}
LEARNS_EVAL = {"eval_batch_size": 8, "max_new_tokens": 4}


def _labeled(n: int) -> list[Example]:
    pool, gold = pool_of(n)
    return [Example(prompt=e.prompt, answer=gold[str(e.id)], id=e.id) for e in pool]


def _train_adapter(loaded, folder: Path, budget: int = 10):
    from dataeff.finetune import FinetuneSettings, run_finetune

    examples = _labeled(24)
    settings = FinetuneSettings.from_dict({"seed": 0, "chat_template": True, **LEARNS, **LEARNS_EVAL})
    return run_finetune(
        loaded, examples[:16], examples[16:], TASK, budget, settings, adapter_dir=folder, progress=False
    )


def _snapshot(model) -> tuple[dict, dict, list]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    return state, flags, [(n, type(m).__name__) for n, m in model.named_modules()]


def _assert_as_before(model, before) -> None:
    state, flags, modules = _snapshot(model)
    assert list(state) == list(before[0])
    assert all(torch.equal(state[k], before[0][k]) for k in state)  # bit-identical
    assert flags == before[1] and modules == before[2]
    assert not hasattr(model, "peft_config")


def test_an_attached_adapter_answers_and_leaves_the_base_model_bit_identical(tiny_loaded, tmp_path):
    from dataeff.adapters import attached_adapter
    from dataeff.confidence import score_confidence

    _train_adapter(tiny_loaded, tmp_path / "adapter")
    model = tiny_loaded.model
    before = _snapshot(model)
    ids = tiny_loaded.tokenizer("Question: Is the following sentence plausible? Answer:", return_tensors="pt")
    with torch.no_grad():
        base_logits = model(**ids).logits
    prompts = _labeled(4)

    def answers(m) -> list[tuple[str, float]]:
        return [(a.answer, a.confidence) for a in score_confidence(m, tiny_loaded.tokenizer, prompts, progress=False)]

    base_answers = answers(model)
    rng = torch.random.get_rng_state()
    with attached_adapter(tiny_loaded, tmp_path / "adapter") as peft_model:
        assert torch.equal(torch.random.get_rng_state(), rng)  # attaching draws no random numbers of the caller's
        assert any("lora_" in n for n, _ in model.named_modules())  # in the shared model itself, for the block
        assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" in n)
        with torch.no_grad():
            assert not torch.equal(peft_model(**ids).logits, base_logits)  # the adapter changes the answers
        assert answers(peft_model) != base_answers
    _assert_as_before(model, before)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, base_logits)
    assert answers(model) == base_answers

    with pytest.raises(RuntimeError, match="boom"):  # an error inside the block detaches too
        with attached_adapter(tiny_loaded, tmp_path / "adapter"):
            raise RuntimeError("boom")
    _assert_as_before(model, before)


def test_an_adapter_that_does_not_fit_is_refused_and_the_model_left_as_it_was(tiny_loaded, tmp_path):
    from safetensors.torch import load_file, save_file

    from dataeff.adapters import attached_adapter

    folder = tmp_path / "adapter"
    _train_adapter(tiny_loaded, folder)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file(dict(list(weights.items())[: len(weights) // 2]), str(folder / "adapter_model.safetensors"))
    before = _snapshot(tiny_loaded.model)
    with pytest.raises(DataError, match="does not fit this model"):
        with attached_adapter(tiny_loaded, folder):
            pass
    _assert_as_before(tiny_loaded.model, before)
    with pytest.raises(DataError, match="no saved LoRA adapter"):
        with attached_adapter(tiny_loaded, tmp_path / "nothing"):
            pass


def test_only_the_best_adapter_is_kept(tiny_loaded, tmp_path):
    from dataeff.adapters import (
        AdapterInfo,
        adapter_model_version,
        keep_adapter,
        latest_adapter,
        list_adapters,
        read_info,
        staging,
    )
    from dataeff.finetune import FinetuneResult
    from dataeff.models import LoraSettings, attach_lora

    root = tmp_path / "adapters"

    def save(budget: int, train_hash: str, score: float) -> str | None:
        with staging(root, f"{train_hash}-b{budget}") as staged:
            assert staged is not None
            peft_model = attach_lora(tiny_loaded.model, LoraSettings(r=2, alpha=4, target_modules=("q_proj",)))
            peft_model.save_pretrained(str(staged))
            peft_model.unload()
            result = FinetuneResult(budget, score, False, budget, 8, 1.0, 0.1, str(staged), {"chat_template": True})
            return keep_adapter(staged, "tiny", train_hash, result, "exact_match")

    first = save(10, "aaaa1111bbbb", 0.4)
    info = read_info(first or "")
    assert first == str(root / "aaaa1111bbbb-b10") and info is not None and time.time() - info.saved_at < 60
    assert info == AdapterInfo("tiny", 10, "aaaa1111bbbb", 0.4, 8, "exact_match", True, 8, True, info.saved_at)
    stale = root / "cccc-b5.tmp-1-2"  # a save that crashed an hour ago: pruned
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    young = root / "dddd-b5.tmp-1-3"  # may be a fine-tune running now: left alone
    young.mkdir()
    second = save(20, "eeee2222ffff", 0.6)
    assert [p.name for p, _ in list_adapters(root)] == ["eeee2222ffff-b20"]
    assert not Path(first).exists() and not stale.exists() and young.exists()
    assert save(10, "gggg3333hhhh", 0.9) is None  # a smaller budget (e.g. MLflow lost its run): the larger one stays
    best = latest_adapter(root, "tiny")
    assert best is not None and str(best[0]) == second
    assert adapter_model_version(best[1]) == "dataeff-tiny-lora-b20-eeee2222"
    assert latest_adapter(root, "another-model") is None


# ----------------------------------------------------------------------------- the loop, real services


def _project(make_project, **overrides):
    """A 60-item yes/no project whose fine-tunes teach the tiny model to answer a label."""
    pool, gold = pool_of(60)
    cfg, home = make_project(pool, "pred")
    cfg.finetune = {**cfg.finetune, **LEARNS}
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.save(home)
    return cfg, gold, home


def _queue_head(svc, cfg, exclude: set[str], n: int) -> list[str]:
    """The first ``n`` items annotators meet (priority, then task id), left out ``exclude``: computed here."""
    from integrations.label_studio import PRIORITY_FIELD

    tasks = [t for t in svc.ls.tasks(cfg.label_studio_project_id) if t.dataeff_id not in exclude]
    tasks.sort(key=lambda t: (-float(t.data.get(PRIORITY_FIELD) or 0), t.task_id))
    return [t.dataeff_id for t in tasks[:n]]


def test_a_new_adapter_re_scores_the_queue_and_switches_the_model_version(make_project):
    from flows.bootstrap import bootstrap
    from flows.loop import loop_iteration
    from flows.predictions import current_predictor, predict_examples

    cfg, gold, home = _project(make_project, prelabel={"min_accuracy": 0.0}, rescore_max_items=10)
    bootstrap(cfg.name, home=str(home))
    svc = _services(cfg)
    pid = cfg.label_studio_project_id
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    annotator = _annotator(cfg, gold)
    annotator.label_requested()
    first = loop_iteration(cfg.name, home=str(home))
    assert first["prelabels"]["model_version"] == f"dataeff-{cfg.model}"  # no adapter yet: the base model
    assert first["prelabels"]["pushed"] == 0 and first["prelabels"]["scored"] == 0  # judged by the bootstrap
    before = ls_testing.predictions(svc.ls, pid)

    annotator.label_requested()
    second = loop_iteration(cfg.name, home=str(home))
    assert second["finetuned_now"] == [10]
    pre = second["prelabels"]
    version = pre["model_version"]
    assert re.fullmatch(rf"dataeff-{re.escape(cfg.model)}-lora-b10-[0-9a-f]{{8}}", version), version
    assert pre["action"] == "rescore" and pre["shown"] == version and pre["scored"] == 10 and pre["pushed"] >= 1
    assert "withheld_reason" not in pre
    assert svc.ls.project_info(pid)["model_version"] == version  # annotators see the adapter's answers now

    # the adapter was saved under the project's home, named in the logged fine-tune, and it predicts
    adapters = sorted((home / "projects" / cfg.name / "adapters").iterdir())
    assert len(adapters) == 1 and adapters[0].name.endswith("-b10") and version.endswith(adapters[0].name[:8])
    predictor = current_predictor(svc)
    assert (predictor.model_version, predictor.adapter_dir, predictor.budget) == (version, str(adapters[0]), 10)
    assert predictor.accuracy == pytest.approx(second["measured"]["10"])
    run = next(r for r in svc.tracker.list_runs(cfg.name, "finetune") if r["tags"].get("dataeff.budget") == "10")
    from mlflow import MlflowClient

    logged = json.loads(
        Path(MlflowClient(cfg.tracking_uri).download_artifacts(run["run_id"], "finetune.json")).read_text()
    )
    assert logged["adapter_dir"] == str(adapters[0])

    # predictions of the new version: only on the head of the queue (unlabeled, eval aside), one each
    after = ls_testing.predictions(svc.ls, pid)
    new = [p for p in after if p["model_version"] == version]
    assert len(new) == pre["pushed"] and len(after) == len(before) + pre["pushed"]
    task_of = {t.dataeff_id: t.task_id for t in svc.ls.tasks(pid)}
    head = _queue_head(svc, cfg, annotator.done | set(roles["eval"]), 10)
    assert {p["task_id"] for p in new} <= {task_of[i] for i in head}
    assert all(p["result"][0]["value"]["choices"][0] in ("yes", "no") for p in new)

    # the same for the ML backend: the rules applied with the predictor's accuracy
    used, plan = predict_examples(
        svc, [Example(prompt=e.prompt, id=e.id) for e in pool_of(3)[0]] + [Example("", id="x")]
    )
    assert used == predictor and "x" in plan.unmatched and set(plan.answers) <= {"q000", "q001", "q002"}

    third = loop_iteration(cfg.name, home=str(home))  # same labels, same adapter: nothing new
    assert third["prelabels"]["action"] == "keep" and third["prelabels"]["pushed"] == 0
    assert third["prelabels"]["scored"] == 0
    assert len(ls_testing.predictions(svc.ls, pid)) == len(after)


def test_the_accuracy_gate_withholds_new_and_withdraws_known_poor_pre_annotations(make_project):
    from flows.bootstrap import bootstrap
    from flows.loop import loop_iteration

    cfg, gold, home = _project(make_project, prelabel={"min_accuracy": 1.0})
    bootstrap(cfg.name, home=str(home))
    svc = _services(cfg)
    pid = cfg.label_studio_project_id
    roles = svc.tracker.read_bootstrap(cfg.name, cfg.model)
    # as if the bootstrap had pre-annotated with the base model: three queued items and one the team labels first
    queued = [i for i in gold if i not in set(roles["lowconf"]) | set(roles["eval"])][:3]
    base = f"dataeff-{cfg.model}"
    svc.ls.push_predictions(pid, {i: ("yes", 0.9) for i in [*queued, roles["lowconf"][0]]}, model_version=base)
    annotator = _annotator(cfg, gold)
    labeled = annotator.label_requested()
    task_of = {t.dataeff_id: t.task_id for t in svc.ls.tasks(pid)}
    before = ls_testing.predictions(svc.ls, pid)

    first = loop_iteration(cfg.name, home=str(home))  # the zero-shot is measured now: below 100%
    assert first["measured"]["0"] < 1.0
    pre = first["prelabels"]
    assert (pre["model_version"], pre["action"], pre["pushed"], pre["scored"]) == (base, "keep", 0, 0)
    assert pre["withdrawn"] == {base: 3} and "below 100%" in pre["withheld_reason"]
    after = ls_testing.predictions(svc.ls, pid)
    gone = {p["task_id"] for p in before} - {p["task_id"] for p in after}
    assert gone == {task_of[i] for i in queued}  # never pre-selected again, in any view
    assert task_of[roles["lowconf"][0]] in {p["task_id"] for p in after}  # a labeled item keeps its prediction
    assert first["labeled"] == labeled and len(svc.ls.pull_labeled(pid).examples) == labeled  # no annotation touched

    annotator.label_requested()
    second = loop_iteration(cfg.name, home=str(home))  # a fine-tuned adapter, measured below 100% too
    assert second["finetuned_now"] == [10] and second["measured"]["10"] < 1.0
    pre = second["prelabels"]
    assert pre["model_version"].startswith(f"{base}-lora-b10-") and pre["action"] == "keep"
    assert pre["pushed"] == 0 and pre["scored"] == 0 and pre["withdrawn"] == {}
    assert "below 100%" in pre["withheld_reason"]
    assert svc.ls.project_info(pid)["model_version"] == base
    assert ls_testing.predictions(svc.ls, pid) == after  # nothing pushed, nothing more deleted
