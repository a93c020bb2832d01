"""What a new user hits with kill, Ctrl-C, two copies of one command, bad paths and broken files:
one writer per run, no silent substitutions, one line per bad input, honest exit codes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grp_workbench.harness.config import build_config
from grp_workbench.harness.errors import HarnessError, HarnessWarning
from grp_workbench.harness.runs import RunDir, atomic_write_json, require_writable_folder
from grp_workbench.harness.trainer import train
from tests.conftest import TOY_PRESETS, TOY_SPEC, ToyConfig, ToyRegression, metric_rows
from tests.test_trainer import _start_slow_run, _wait_for_checkpoint_step

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides):
    return build_config(ToyConfig, TOY_PRESETS, "paper", {k: str(v) for k, v in overrides.items()})


def test_a_second_writer_of_a_run_is_refused_with_the_holders_pid(tmp_path):
    run = RunDir(tmp_path / "run")
    proc = _start_slow_run(run.path)
    try:
        _wait_for_checkpoint_step(run, 10, proc)
        config = build_config(ToyConfig, TOY_PRESETS, "paper", {"deterministic": True, "total_steps": 200})
        with pytest.raises(HarnessError, match=rf"{run.path} is being written by another process \(pid {proc.pid}:"):
            train(TOY_SPEC, config, run.path, "paper", if_exists="resume", quiet=True)
        assert run.status().startswith(f"running (pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    rows_before = len(run.read_metrics())
    assert run.status().startswith("incomplete")  # the lock died with its process
    config = build_config(ToyConfig, TOY_PRESETS, "paper", {"deterministic": True, "total_steps": 200})
    assert train(TOY_SPEC, config, run.path, "paper", if_exists="resume", quiet=True)["status"] == "finished"
    steps = [row["step"] for row in run.read_metrics()]
    assert len(steps) == len(set(zip(steps, [r["split"] for r in run.read_metrics()])))  # no row twice
    assert rows_before <= len(steps)


def test_resume_of_a_missing_run_is_an_error_and_resume_or_start_starts_it(tmp_path):
    with pytest.raises(HarnessError, match="--resume: there is no run in .*typo|--resume: there is no run in"):
        train(TOY_SPEC, _config(total_steps=20), tmp_path / "typo", "paper", if_exists="resume", quiet=True)
    assert not (tmp_path / "typo").exists()
    summary = train(TOY_SPEC, _config(total_steps=20), tmp_path / "new", "paper", if_exists="resume-or-start",
                    quiet=True)
    assert summary["status"] == "finished"


def test_a_run_folder_that_cannot_be_made_fails_before_any_data_loads(tmp_path, monkeypatch):
    def build_must_not_run(self, config, policy):
        raise AssertionError("data loaded before the run folder was checked")

    monkeypatch.setattr(ToyRegression, "__init__", build_must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(HarnessError, match=f"{blocker} is a file, not a folder; choose another path"):
        train(TOY_SPEC, _config(), blocker / "run", "paper")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as on a read-only mount (root ignores chmod)
    monkeypatch.setattr(os, "statvfs", lambda path: type("S", (), {"f_flag": os.ST_RDONLY})())
    with pytest.raises(HarnessError, match="is not writable \\(the file system is read-only\\)"):
        train(TOY_SPEC, _config(), tmp_path / "run", "paper")


def test_cli_names_a_run_folder_under_a_file_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = subprocess.run([sys.executable, "-m", "grp_workbench.harness.cli", "federated", "train-classifier",
                             "--preset", "tiny", "--run-dir", str(blocker / "run")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot create the run directory {blocker / 'run'}: {blocker} is a file, not a folder; "
        "choose another path."]


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    config = _config(total_steps=30, deterministic=True)
    train(TOY_SPEC, config, tmp_path / "full", "paper", quiet=True)
    run = RunDir(tmp_path / "crashed")
    train(TOY_SPEC, config, run.path, "paper", quiet=True)
    (run.path / "summary.json").unlink()  # as if the disk filled while the last checkpoint was written
    latest = run.latest_checkpoint()
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.warns(HarnessWarning, match=f"checkpoint {latest} cannot be read.*Using the checkpoint before it"):
        resumed = train(TOY_SPEC, config, run.path, "paper", if_exists="resume", quiet=True)
    assert resumed["status"] == "finished" and resumed["resumed_from"] == [20]
    assert metric_rows(run.path) == metric_rows(tmp_path / "full")


def test_an_unfinished_run_used_as_an_input_is_announced(tmp_path):
    run = RunDir(tmp_path / "prior")
    train(TOY_SPEC, _config(total_steps=20), run.path, "paper", quiet=True)
    assert run.last_algorithm_state("model", "train one")  # finished: no warning
    summary = run.summary
    atomic_write_json(run.path / "summary.json", {**summary, "status": "interrupted"})
    with pytest.warns(HarnessWarning, match=r"is not a finished run \(interrupted, last checkpoint at step 20\); "
                                            "using its model from step 20"):
        run.last_algorithm_state("model", "train one")


def test_ctrl_c_exits_130_and_the_run_lists_as_interrupted(tmp_path):
    run_dir = tmp_path / "runs" / "clf"
    command = [sys.executable, "-m", "grp_workbench.harness.cli", "federated", "train-classifier", "--preset", "tiny",
               "--set", "total_steps=1000000", "--set", "checkpoint_every=20", "--set", "eval_every=100000",
               "--run-dir", str(run_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = RunDir(run_dir)
    deadline = time.time() + 120
    while run.latest_checkpoint() is None:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out.startswith("interrupted:")
    listed = subprocess.run([sys.executable, "-m", "grp_workbench.harness.cli", "runs", str(tmp_path / "runs")],
                            capture_output=True, text=True)
    assert "\tinterrupted, last checkpoint at step" in listed.stdout


def test_every_output_file_gets_the_same_normal_mode(tmp_path):
    run = RunDir.create(tmp_path / "run", {"method": "toy"})
    run.log(1, "train", {"loss": 1.0})
    run.write_summary({"status": "finished"})
    modes = {path.name: path.stat().st_mode & 0o777 for path in run.path.iterdir() if path.is_file()}
    umask = os.umask(0)
    os.umask(umask)
    assert modes == dict.fromkeys(("config.json", "metrics.jsonl", "summary.json"), 0o666 & ~umask)


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(HarnessError, match=r"^cannot write .*summary.json: the disk is full; free some space\.$"):
        atomic_write_json(tmp_path / "summary.json", {})
    require_writable_folder(tmp_path / "new" / "deeper")  # a creatable folder passes


# ---- data keyed by what built it ------------------------------------------------------------------
def test_a_dataset_rebuilt_under_its_name_never_changes_what_a_resumed_run_trains_on(tmp_path):
    from grp_workbench.envs.datasets import build
    from grp_workbench.harness.runs import file_sha256, read_json
    from grp_workbench.rl.offline.td3bc import SPEC

    first = build("pointreach-medium", seed=0, n_steps=300)
    config = build_config(SPEC.config_cls, SPEC.presets, "tiny", {
        "dataset": "pointreach-medium", "hidden": "32", "batch_size": "64", "total_steps": "20", "eval_every": "10",
        "checkpoint_every": "10", "eval_episodes": "1"})
    run = RunDir(tmp_path / "run")
    train(SPEC, config, run.path, "tiny", quiet=True)
    assert read_json(run.path / "config.json")["inputs"]["dataset"] == {"path": str(first),
                                                                      "sha256": file_sha256(first)}
    (run.path / "summary.json").unlink()  # an unfinished run: it has a checkpoint to resume from
    second = build("pointreach-medium", seed=1, n_steps=300)
    assert second != first and first.is_file()  # another build is another file; the first is kept
    with pytest.raises(HarnessError, match=f"the dataset under run {run.path} changed since it started: it trained "
                                           f"on {first} .* which is now {second}"):
        train(SPEC, config, run.path, "tiny", if_exists="resume", quiet=True)
    assert build("pointreach-medium", seed=0, n_steps=300) == first  # the same inputs reuse the cached file
    assert train(SPEC, config, run.path, "tiny", if_exists="resume", quiet=True)["status"] == "finished"


def test_counts_below_one_are_errors_naming_the_option(tmp_path):
    from grp_workbench.envs.datasets import build
    from grp_workbench.rl import RLError

    with pytest.raises(RLError, match="--steps 0: a dataset needs at least 1 transition"):
        build("pointreach-medium", n_steps=0)
    result = subprocess.run([sys.executable, "-m", "grp_workbench.harness.cli", "rl", "levels", "build", "--out",
                             str(tmp_path), "--train-per-structure", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and "'--train-per-structure': 0 is not in the range x>=1" in result.stderr


def test_an_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    from grp_workbench.harness.data import cache_dir

    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("WORKBENCH_CACHE", str(blocker))
    with pytest.raises(HarnessError, match="cannot create the cache folder .*a part of the path is a file.*"
                                           "point \\$WORKBENCH_CACHE at a writable folder"):
        cache_dir("offline_rl")


def test_a_dataset_path_that_is_a_folder_says_so(tmp_path):
    from grp_workbench.rl import RLError
    from grp_workbench.rl.offline.datasets import load_dataset

    with pytest.raises(RLError, match=f"dataset path {tmp_path / 'data.hdf5'} is a folder"):
        (tmp_path / "data.hdf5").mkdir()
        load_dataset(str(tmp_path / "data.hdf5"))



def test_a_dataset_that_would_not_fit_on_the_disk_is_refused_before_hdf5_writes(tmp_path, monkeypatch):
    import shutil

    from grp_workbench.envs.datasets import build
    from grp_workbench.rl import RLError

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 10))
    with pytest.raises(RLError, match=f"cannot write {tmp_path / 'pr.hdf5'}: 0 MiB free, up to 1 MiB needed; free "
                                      "some space"):
        build("pointreach-medium", n_steps=300, path=tmp_path / "pr.hdf5")
    assert list(tmp_path.iterdir()) == []


def test_off_a_terminal_training_prints_progress_lines(tmp_path, monkeypatch, capsys):
    import grp_workbench.harness.trainer as trainer

    monkeypatch.setattr(trainer, "PROGRESS_LINE_SECONDS", 0.0)  # every step, instead of every 30 s
    train(TOY_SPEC, _config(total_steps=20), tmp_path / "run", "paper")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{tmp_path / 'run'}: step")]
    assert len(lines) == 20 and lines[-1].startswith(f"{tmp_path / 'run'}: step 20/20 (100%)")
    train(TOY_SPEC, _config(total_steps=20), tmp_path / "quiet", "paper", quiet=True)
    assert "step" not in capsys.readouterr().err


def test_a_long_step_announces_itself_off_a_terminal():
    import io

    from grp_workbench.harness.progress import step

    log = io.StringIO()  # not a terminal
    with step("simulate", every=0.05, stream=log) as timed:
        time.sleep(0.18)
    lines = log.getvalue().splitlines()
    assert lines[0] == "[start] simulate" and lines[-1].startswith("[done] simulate: ")
    assert len([line for line in lines if line.startswith("[running] simulate: ")]) >= 2
    assert timed["seconds"] >= 0.18
    with pytest.raises(ValueError), step("broken", stream=log):
        raise ValueError
    assert log.getvalue().splitlines()[-1].startswith("[failed] broken: ")
