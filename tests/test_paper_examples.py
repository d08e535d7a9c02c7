"""The paper's experiment scripts (examples/paper) end to end on mock or generated data (`--smoke`)."""

from __future__ import annotations

import csv
import glob
import importlib
import pathlib
import sys

import pytest
import tensorflow as tf

PAPER = pathlib.Path(__file__).resolve().parents[1] / "examples" / "paper"


def _script(name: str):
    if str(PAPER) not in sys.path:
        sys.path.insert(0, str(PAPER))
    return importlib.import_module(name)


def _tags(folder: pathlib.Path) -> set[str]:
    tags = set()
    for path in glob.glob(str(folder / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _check_outputs(out: pathlib.Path, methods: list[str], columns: list[str], units: list[str]) -> list[list[str]]:
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in methods) and all(c in table for c in columns)
    with (out / "results.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["method", "task", "metric", "mean", "std", "seeds"]
    assert [r[0] for r in rows if r[2] == "delta_m_percent"] == [methods[-1]]  # Δm of the aggregator vs the baseline
    assert (out / "task_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tags = _tags(out / "tensorboard" / methods[-1] / "seed0" / "train")
    assert {f"epoch_weight/{u}" for u in units} <= tags and "epoch_loss" in tags
    return rows


def test_cifar_mtl_smoke_writes_table_weights_plot_and_tensorboard(tmp_path):
    result = _script("cifar_mtl").main(["--smoke", "--out", str(tmp_path)])
    rows = _check_outputs(
        tmp_path, ["LinearScalarization", "BayesAgg"], ["coarse accuracy", "coarse auc"], ["coarse[0]", "coarse[19]"]
    )
    accuracy = [float(r[3]) for r in rows if r[0] == "BayesAgg" and r[2] == "accuracy"]
    assert accuracy == [pytest.approx(result["results"]["BayesAgg"][0]["coarse"]["accuracy"])] and 0 <= accuracy[0] <= 1
    assert len(result["histories"]["BayesAgg"]["coarse[0]"]) == 2  # one mean weight per epoch


def test_qm9_smoke_reports_mae_in_original_units(tmp_path):
    result = _script("qm9").main(["--smoke", "--out", str(tmp_path), "--aggregator", "UncertaintyWeighting"])
    targets = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G"]
    _check_outputs(tmp_path, ["LinearScalarization", "UncertaintyWeighting"], [f"{t} mae" for t in targets], targets)
    scores = result["results"]["UncertaintyWeighting"][0]
    assert set(scores) == set(targets) and all(scores[t]["mae"] > 0 for t in targets)


@pytest.mark.slow
def test_utkface_smoke_against_single_task_models(tmp_path):
    result = _script("utkface").main(["--smoke", "--out", str(tmp_path), "--baseline", "single-task"])
    _check_outputs(
        tmp_path, ["single-task", "BayesAgg"], ["age mae", "gender accuracy", "ethnicity accuracy"], ["age", "gender"]
    )
    assert {p.name for p in (tmp_path / "tensorboard" / "single-task" / "seed0").iterdir()} == {
        "age",
        "gender",
        "ethnicity",
    }
    assert result["results"]["single-task"][0]["age"]["mae"] > 0


@pytest.mark.slow
def test_chestxray14_smoke(tmp_path):
    result = _script("chestxray14").main(["--smoke", "--out", str(tmp_path)])
    _check_outputs(
        tmp_path, ["LinearScalarization", "BayesAgg"], ["Atelectasis auc", "Hernia auc"], ["Atelectasis", "Hernia"]
    )
    assert len(result["results"]["BayesAgg"][0]) == 14


def test_unknown_aggregator_and_missing_folder_stop_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"Unknown aggregator 'Bayes'.*'BayesAgg'.*'single-task'"):
        _script("cifar_mtl").main(["--aggregator", "Bayes", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        _script("utkface").main(["--out", str(tmp_path)])
    assert "--directory is required" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_weight_plot_without_matplotlib_says_which_extra(tmp_path, monkeypatch, capsys):
    common = _script("paper_common")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert common.plot_weights({"a": [0.5, 0.6]}, "t", tmp_path / "w.png") is None
    assert "keras-bayesagg[plots]" in capsys.readouterr().err and not (tmp_path / "w.png").exists()
