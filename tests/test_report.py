import json
import subprocess
import sys
from pathlib import Path

from grp_workbench.harness.config import build_config
from grp_workbench.harness.report import write_report, write_results
from grp_workbench.harness.trainer import train
from tests.conftest import TOY_PRESETS, TOY_SPEC, ToyConfig

CHECKER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_results.py"


def _runs(root: Path, seeds=(0, 1, 2)) -> Path:
    for seed in seeds:
        config = build_config(ToyConfig, TOY_PRESETS, "quick", {"seed": seed})
        train(TOY_SPEC, config, root / f"seed{seed}", "quick", quiet=True)
    return root


def test_report_has_tables_and_figures(tmp_path):
    runs = _runs(tmp_path / "runs")
    (tmp_path / "runs" / "unfinished").mkdir()
    (tmp_path / "runs" / "unfinished" / "config.json").write_text(json.dumps({"method": "toy"}))
    path = write_report([runs], tmp_path / "report")
    text = path.read_text()
    assert "| toy | linear | 3 |" in text
    assert "Left out (not finished)" in text
    for figure in ("neg_mse_bars.png", "neg_mse_curves.png"):
        assert (tmp_path / "report" / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in text


def test_results_file_follows_the_common_format(tmp_path):
    records = [{"method": m, "task": "linear", "seed": s, "metrics": {"score": float(s + (m == "b"))}}
               for m in ("a", "b") for s in range(3)]
    path = write_results(tmp_path / "suite", "toy_suite", "python scripts/bench_toy.py", records)
    data = json.loads(path.read_text())
    assert {"suite", "command", "git_commit", "date", "machine", "records", "summary"} <= data.keys()
    assert {row["method"]: row["iqm"] for row in data["summary"]} == {"a": 1.0, "b": 2.0}
    assert "| a | linear | score | 3 |" in (tmp_path / "suite" / "README.md").read_text()
    if CHECKER.is_file():
        check = subprocess.run([sys.executable, str(CHECKER), str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


def test_image_grid_writes_rows_of_unequal_length(tmp_path):
    import numpy as np

    from grp_workbench.harness.report import plot_image_grid

    path = plot_image_grid({"a": [np.zeros((4, 4))] * 3, "b": [np.ones((4, 4, 3))]}, tmp_path / "g.png",
                           titles={"a": ["x", "y", "z"]}, cmap="gray")
    assert path.is_file() and path.stat().st_size > 0


def test_report_never_pools_runs_of_different_settings_or_counts_a_seed_twice(tmp_path):
    import shutil

    import pytest

    from grp_workbench.harness.errors import HarnessWarning

    runs = _runs(tmp_path / "runs")
    train(TOY_SPEC, build_config(ToyConfig, TOY_PRESETS, "paper", {"seed": 0}), runs / "paper-seed0", "paper",
          quiet=True)
    shutil.copytree(runs / "seed1", runs / "zz-copy-of-seed1")
    (runs / "paper-seed0" / "metrics.jsonl").unlink()  # its curve cannot be drawn
    duplicate = r"seed 1 of toy \[preset=quick, total_steps=40\] on linear is already counted \(duplicate seed"
    with pytest.warns(HarnessWarning, match=duplicate):
        text = write_report([runs], tmp_path / "report").read_text()
    assert "| toy [preset=quick, total_steps=40] | linear | 3 |" in text
    assert "| toy [preset=paper, total_steps=60] | linear | 1 |" in text
    assert "zz-copy-of-seed1: seed 1 of toy [preset=quick, total_steps=40] on linear is already counted" in text
    assert "No learning curve for toy [preset=paper, total_steps=60] on linear: its runs share no evaluation" in text


def test_bar_chart_legend_names_every_method(tmp_path, monkeypatch):
    import grp_workbench.harness.report as report

    shown = {}
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: shown.setdefault(
        "legend", [t.get_text() for t in fig.axes[0].get_legend().get_texts()]))
    rows = [{"method": "a", "task": "t1", "metric": "m", "iqm": 1.0, "iqm_ci95": [0.5, 1.5]},
            {"method": "b", "task": "t2", "metric": "m", "iqm": 2.0, "iqm_ci95": [1.5, 2.5]}]
    report.plot_bars(rows, tmp_path / "bars.png")
    assert shown["legend"] == ["a", "b"]


def test_results_name_paths_relative_to_the_checkout(tmp_path, monkeypatch):
    from grp_workbench.harness.report import portable

    monkeypatch.chdir(tmp_path)
    assert portable(f"python scripts/x.py --runs {tmp_path}/runs/bench --out {tmp_path}") == \
        "python scripts/x.py --runs runs/bench --out ."
