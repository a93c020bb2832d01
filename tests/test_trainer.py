import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grp_workbench.harness.config import build_config
from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import train
from tests.conftest import TOY_PRESETS, TOY_SPEC, ToyConfig, ToyRegression, metric_rows

REPO = Path(__file__).resolve().parent.parent


def _config(**overrides) -> ToyConfig:
    return build_config(ToyConfig, TOY_PRESETS, "paper", {"deterministic": True, **overrides})


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path):
    a = train(TOY_SPEC, _config(seed=1), tmp_path / "a", "paper", quiet=True)
    b = train(TOY_SPEC, _config(seed=1), tmp_path / "b", "paper", quiet=True)
    c = train(TOY_SPEC, _config(seed=2), tmp_path / "c", "paper", quiet=True)
    assert metric_rows(tmp_path / "a") == metric_rows(tmp_path / "b")
    assert a["final"] == b["final"]
    assert a["final"] != c["final"]


def test_training_moves_the_metric_the_right_way(tmp_path):
    summary = train(TOY_SPEC, _config(), tmp_path / "run", "paper", quiet=True)
    evals = RunDir(tmp_path / "run").read_metrics("eval")
    assert evals[-1]["neg_mse"] > 10 * evals[0]["neg_mse"]  # mse fell by more than 10x
    assert summary["status"] == "finished" and summary["step"] == 60
    assert summary["best"]["neg_mse"] >= summary["final"]["neg_mse"]
    assert summary["throughput"]["steps_per_s"] > 0 and summary["throughput"]["wall_seconds"] > 0
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch):
    train(TOY_SPEC, _config(), tmp_path / "full", "paper", quiet=True)
    original_update = ToyRegression.update
    calls = {"n": 0}

    def crashing_update(self):
        calls["n"] += 1
        if calls["n"] == 35:  # after the step-30 checkpoint, before the step-40 one
            raise RuntimeError("simulated crash")
        return original_update(self)

    monkeypatch.setattr(ToyRegression, "update", crashing_update)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(TOY_SPEC, _config(), tmp_path / "crashed", "paper", quiet=True)
    assert RunDir(tmp_path / "crashed").summary is None
    monkeypatch.setattr(ToyRegression, "update", original_update)
    resumed = train(TOY_SPEC, _config(), tmp_path / "crashed", "paper", if_exists="resume", quiet=True)
    assert resumed["resumed_from"] == [30]
    assert metric_rows(tmp_path / "crashed") == metric_rows(tmp_path / "full")


def test_steps_reported_by_update_drive_the_schedule(tmp_path):
    summary = train(TOY_SPEC, _config(steps_per_update=4, total_steps=40), tmp_path / "run", "paper", quiet=True)
    assert summary["step"] == 40 and summary["throughput"]["updates_per_s"] < summary["throughput"]["steps_per_s"]
    assert [r["step"] for r in RunDir(tmp_path / "run").read_metrics("eval")] == [12, 20, 32, 40]


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(TOY_SPEC, _config(total_steps=20), tmp_path / "run", "paper", quiet=True)
    with pytest.raises(HarnessError, match="different config.*lr"):
        train(TOY_SPEC, _config(total_steps=20, lr=0.01), tmp_path / "run", "paper", if_exists="resume")


def test_finished_run_is_left_alone_on_resume(tmp_path):
    first = train(TOY_SPEC, _config(total_steps=20), tmp_path / "run", "paper", quiet=True)
    again = train(TOY_SPEC, _config(total_steps=20), tmp_path / "run", "paper", if_exists="resume", quiet=True)
    assert again == first


SLOW_TOY = """
import sys, time
from grp_workbench.harness.config import build_config
from grp_workbench.harness.trainer import train
from tests.conftest import TOY_PRESETS, TOY_SPEC, ToyConfig, ToyRegression
update = ToyRegression.update
ToyRegression.update = lambda self: (time.sleep(0.05), update(self))[1]
config = build_config(ToyConfig, TOY_PRESETS, "paper", {"deterministic": True, "total_steps": 200})
train(TOY_SPEC, config, sys.argv[1], "paper", if_exists="resume-or-start", quiet=True)
"""


def _start_slow_run(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_TOY, str(run_dir)], cwd=REPO)


def _wait_for_checkpoint_step(run: RunDir, at_least: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = run.latest_checkpoint()
        if latest is not None and int(latest.stem.split("_")[1]) >= at_least:
            return
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


def test_kill_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
    config = build_config(ToyConfig, TOY_PRESETS, "paper", {"deterministic": True, "total_steps": 200})
    train(TOY_SPEC, config, tmp_path / "full", "paper", quiet=True)
    run = RunDir(tmp_path / "killed")
    proc = _start_slow_run(run.path)
    _wait_for_checkpoint_step(run, 50, proc)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not run.is_finished()
    resumed = train(TOY_SPEC, config, run.path, "paper", if_exists="resume", quiet=True)
    assert resumed["resumed_from"] and resumed["resumed_from"][0] >= 50
    assert metric_rows(run.path) == metric_rows(tmp_path / "full")


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm", "ctrl-c-then-runner-sigterm"])
def test_ctrl_c_or_sigterm_checkpoints_and_marks_the_run_interrupted(tmp_path, signals):
    run = RunDir(tmp_path / "interrupted")
    proc = _start_slow_run(run.path)
    _wait_for_checkpoint_step(run, 20, proc)
    for sig in signals:  # a SIGTERM after a Ctrl-C (a runner passing on the stop) must not abort the checkpoint
        proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    summary = run.summary
    assert summary["status"] == "interrupted" and 20 <= summary["step"] < 200
    assert run.latest_checkpoint().stem.endswith(f"{summary['step']:012d}")


def test_failed_build_leaves_no_run_directory_and_keeps_the_old_run(tmp_path, monkeypatch):
    train(TOY_SPEC, _config(total_steps=20), tmp_path / "run", "paper", quiet=True)

    def broken_build(self, config, policy):
        raise HarnessError("dataset missing")

    monkeypatch.setattr(ToyRegression, "__init__", broken_build)
    with pytest.raises(HarnessError, match="dataset missing"):
        train(TOY_SPEC, _config(), tmp_path / "new", "paper")
    assert not (tmp_path / "new").exists()
    with pytest.raises(HarnessError, match="dataset missing"):
        train(TOY_SPEC, _config(total_steps=20), tmp_path / "run", "paper", if_exists="overwrite")
    assert RunDir(tmp_path / "run").is_finished()


def test_a_benchmark_cell_stops_the_benchmark_when_its_run_was_interrupted(tmp_path, monkeypatch):
    import grp_workbench.harness.trainer as trainer

    finished = trainer.train_cell(TOY_SPEC, _config(total_steps=20, eval_every=10), str(tmp_path / "a"), "tiny")
    assert finished["status"] == "finished"
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: {"status": "interrupted", "step": 7})
    with pytest.raises(SystemExit, match="interrupted at step 7.*run the same command again"):
        trainer.train_cell(TOY_SPEC, _config(), str(tmp_path / "b"), "tiny")


def test_no_best_without_selection_and_early_stopping_after_patience(tmp_path, monkeypatch):
    # selects_best = False: the main metric is a test metric, so no best is kept
    monkeypatch.setattr(ToyRegression, "selects_best", False, raising=False)
    summary = train(TOY_SPEC, _config(), tmp_path / "no-best", "paper", quiet=True)
    assert summary["best"] == {"step": -1} and summary["stopped_early"] is None and summary["step"] == 60
    monkeypatch.setattr(ToyRegression, "selects_best", True, raising=False)
    # a metric that never improves after the first evaluation stops two evaluations later
    original_evaluate = ToyRegression.evaluate
    monkeypatch.setattr(ToyRegression, "early_stop_evals", 2, raising=False)
    monkeypatch.setattr(ToyRegression, "evaluate", lambda self: {**original_evaluate(self), "neg_mse": -1.0})
    stopped = train(TOY_SPEC, _config(), tmp_path / "stopped", "paper", quiet=True)
    assert stopped["status"] == "finished" and stopped["stopped_early"] == 30 and stopped["step"] == 30
    assert stopped["best"]["step"] == 10


def test_the_progress_line_shows_only_the_latest_logs_sparse_metrics(tmp_path, monkeypatch, capsys):
    from grp_workbench.harness import trainer

    monkeypatch.setattr(trainer, "PROGRESS_LINE_SECONDS", 0.0)  # a line after every update
    monkeypatch.setattr(ToyRegression, "bar_metrics", ("episode_return", "loss"), raising=False)
    original_update = ToyRegression.update
    calls = {"n": 0}

    def sparse_update(self):  # an episode ends in the first five updates only
        calls["n"] += 1
        return {**original_update(self), **({"episode_return": 7.0} if calls["n"] <= 5 else {})}

    monkeypatch.setattr(ToyRegression, "update", sparse_update)
    train(TOY_SPEC, _config(total_steps=20), tmp_path / "run", "paper")
    lines = [line for line in capsys.readouterr().err.splitlines() if "steps/s" in line]
    assert any("episode_return=7" in line and "loss=" in line for line in lines[:10])
    assert "episode_return" not in lines[-1] and "loss=" in lines[-1]  # the step-10 log no longer shows


def test_the_warmed_up_average_forgets_the_initialisation_and_resumes_the_ramp():
    """A plain EMA of decay 0.999 still holds 0.999**99 = 91% of the first weights after 100 updates;
    the warmed-up one holds their product of ramped decays (under 0.1%), and a reload keeps the count."""
    import torch
    from torch import nn

    from grp_workbench.harness.averaging import exponential_average, warmup_decay

    assert warmup_decay(0.999, 0) == 0.1 and warmup_decay(0.999, 10_000) == 0.999
    net = nn.Linear(1, 1, bias=False)
    plain, ramped = exponential_average(net, 0.999), exponential_average(net, 0.999, warmup=True)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for average in (plain, ramped):
        average.update_parameters(net)  # the first update copies: the 'initialisation' is 1
    with torch.no_grad():
        net.weight.fill_(0.0)
    for _ in range(99):
        plain.update_parameters(net)
        ramped.update_parameters(net)
    assert plain.module.weight.item() == pytest.approx(0.999 ** 99)
    expected = 1.0
    for n in range(1, 100):
        expected *= warmup_decay(0.999, n)
    assert ramped.module.weight.item() == pytest.approx(expected) and expected < 1e-3
    copy = exponential_average(nn.Linear(1, 1, bias=False), 0.999, warmup=True)
    copy.load_state_dict(ramped.state_dict())
    assert int(copy.n_averaged) == 100
    with pytest.raises(ValueError, match="decay"):
        exponential_average(net, 1.0)
