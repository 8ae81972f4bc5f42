"""The ``dataeff`` command: JSON out, teaching --help, clear errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main

PAPER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-results"


def _run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def test_auc_matches_the_published_value(capsys):
    published = json.loads((PAPER / "auc_res" / "llama_auc_logscale_by_task_5000.json").read_text())
    human = json.loads((PAPER / "human_eval.json").read_text())
    task = "banking77"
    args = [str(PAPER / "finetune_results" / f"llama_{task}_full_result_v2.json")]
    score = human.get(task, {}).get("score")
    if isinstance(score, (int, float)):
        args += ["--human-score", str(score)]
    code, out, _ = _run(capsys, "auc", *args)
    assert code == 0
    assert abs(out["auc"] - published[task]["extrapolation_auc"]) < 1e-9


def test_auc_of_the_published_curve_without_zero_shot(capsys):
    """qwen/overruling has no budget 0: an error by default, the reference's AUC with the flag."""
    published = json.loads((PAPER / "auc_res" / "qwen_auc_logscale_by_task_5000.json").read_text())
    human = json.loads((PAPER / "human_eval.json").read_text()).get("overruling", {}).get("score")
    path = str(PAPER / "finetune_results" / "qwen_overruling_full_result_v2.json")
    extra = ["--human-score", str(human)] if isinstance(human, (int, float)) else []
    code, _, err = _run(capsys, "auc", path, *extra)
    assert code == 2 and "zero-shot" in err and "Traceback" not in err
    code, out, _ = _run(capsys, "auc", path, *extra, "--allow-missing-zero-shot")
    assert code == 0 and 0 not in out["budgets"] and "no zero-shot" in out["note"]
    assert abs(out["auc"] - published["overruling"]["extrapolation_auc"]) < 1e-9


def test_predict_worked_example(capsys):
    code, out, _ = _run(capsys, "predict", "--coslow", "0.65", "--coef", "0.54", "0.31", "--target", "0.9")
    assert code == 0
    assert out["auc"] == pytest.approx(0.661)
    assert 1000 <= out["labels_needed"]["0.9"] <= 1060
    lo, hi = out["labels_needed_interval"]["0.9"]
    assert lo < out["labels_needed"]["0.9"] < hi


def test_calibrations_lists_the_three_builtins(capsys):
    code, out, _ = _run(capsys, "calibrations")
    assert code == 0 and {"llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3", "qwen2.5-14b-instruct"} <= set(out)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["auc", "__no_zero__"], "zero-shot"),
        (["coslow", "--model", "/nonexistent/model", "--data", "__labeled__"], "not found"),
        (["coslow", "--data", "/nonexistent.jsonl"], "not found"),
        (["predict", "--coslow", "3"], "CoS-Low"),
        (["predict", "--coslow", "0.5", "--calibration", "no-such-family"], "llama-3.1-8b-instruct"),
    ],
)
def test_bad_input_is_a_clear_error_without_traceback(capsys, tmp_path, argv, needle):
    no_zero = tmp_path / "no_zero.json"
    no_zero.write_text(json.dumps({"50": {"accuracy": 0.5}, "100": {"accuracy": 0.6}}))
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c", "answer": "d"}\n')
    argv = [str(no_zero) if a == "__no_zero__" else str(labeled) if a == "__labeled__" else a for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_help_teaches_every_command():
    out = subprocess.run([sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in (
        "auc",
        "predict",
        "confidence",
        "coslow",
        "calibrate",
        "finetune",
        "project",
        "bootstrap",
        "loop",
        "serve",
        "demo",
        "bench",
    ):
        assert command in out
    assert "typical session" in out
    sub = subprocess.run(
        [sys.executable, "-m", "app.cli", "coslow", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--draws" in sub and "--projection-dim" in sub and "(default: 64)" in sub


def test_assess_demo_numbers_keep_labeling(capsys):
    code, out, _ = _run(
        capsys,
        "assess",
        "--coslow",
        "0.327",
        "--measured",
        "0:0.117",
        "50:0.133",
        "100:0.183",
        "--n-eval",
        "60",
        "--primary-target",
        "0.8",
        "--label-cap",
        "633",
        "--labeled",
        "192",
        "--budgets",
        "0",
        "50",
        "100",
        "200",
        "400",
    )
    assert code == 0
    need = out["labels_needed"]["0.8"]
    assert need["lo"] <= need["median"] <= need["hi"] and 0 <= need["p_never"] <= 1
    assert out["decision"]["action"] == "request_labels" and out["decision"]["n_labels"] == 8
    assert out["ceiling_source"].startswith("posterior")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "at least the zero-shot"),
        (["--measured", "0:0.1", "0:0.2"], "given twice"),
        (["--measured", "0:1.4"], "outside [0, 1]"),
        (["--measured", "50:0.4"], "no zero-shot"),
        (["--measured", "0:0.1", "--target", "0"], "(0, 1]"),
        (["--measured", "0:0.1", "--primary-target", "1.5"], "(0, 1]"),
        (["--measured", "zero:0.1"], "LABELS:SCORE"),
    ],
)
def test_assess_bad_input_is_a_clear_error(capsys, argv, message):
    code, out, err = _run(capsys, "assess", "--coslow", "0.3", *argv)
    assert code == 2 and out is None
    assert message in err and "Traceback" not in err


def test_confidence_and_finetune_skip_over_long_items_by_name(tiny_model_dir, tmp_path, capsys):
    rows = [
        {"id": f"q{i}", "prompt": f"Question {i}: is it so? Answer:", "answer": "yes" if i % 2 else "no"}
        for i in range(6)
    ]
    rows.append({"id": "huge", "prompt": "word " * 5000, "answer": "yes"})
    data = tmp_path / "pool.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model = ["--model", str(tiny_model_dir), "--no-chat-template", "--max-prompt-tokens", "64"]
    assert (
        main(["confidence", *model, "--data", str(data), "--out", str(tmp_path / "s.jsonl"), "--max-new-tokens", "2"])
        == 0
    )
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["scored"] == 6 and [s["id"] for s in summary["skipped"]] == ["huge"]
    assert "skipped pool item huge: prompt is" in err
    assert main(["finetune", *model, "--train", str(data), "--eval", str(data), "--budget", "0"]) == 0
    out, err = capsys.readouterr()
    assert [s["id"] for s in json.loads(out)["skipped"]] == ["huge", "huge"] and "skipped eval item huge" in err
