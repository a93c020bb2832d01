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
