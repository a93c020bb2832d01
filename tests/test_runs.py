import json
import os

import pytest

from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.runs import RunDir, atomic_write_json, atomic_write_text


def test_crash_mid_write_leaves_the_old_file_and_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"version": 1})

    def crash(*args):
        raise OSError("disk died during fsync")

    monkeypatch.setattr(os, "fsync", crash)  # the temp file is half written when this fires
    with pytest.raises(OSError):
        atomic_write_text(target, json.dumps({"version": 2}))
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unserializable_value_never_creates_the_file(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "config.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_existing_run_is_never_silently_overwritten(tmp_path):
    run = RunDir.create(tmp_path / "run", {"method": "toy"})
    run.log(1, "train", {"loss": 1.0})
    with pytest.raises(HarnessError, match="already exists.*--resume.*--overwrite"):
        RunDir.create(tmp_path / "run", {"method": "toy"})
    assert RunDir.create(tmp_path / "run", {"method": "toy"}, if_exists="resume").read_metrics()
    run.close()  # as when its process has ended: an open TensorBoard writer flushes into the folder later
    fresh = RunDir.create(tmp_path / "run", {"method": "toy"}, if_exists="overwrite")
    assert fresh.read_metrics() == []


def test_folder_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HarnessError, match="not a run directory"):
        RunDir.create(tmp_path, {"method": "toy"})
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_torn_metrics_line_is_ignored_and_truncation_restores_checkpoint_state(tmp_path):
    run = RunDir.create(tmp_path / "run", {"method": "toy"})
    run.log(1, "train", {"loss": 1.0})
    run.log(2, "train", {"loss": 0.5})
    run.close()
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "spl')  # killed mid-line
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.truncate_metrics(1)
    assert [r["step"] for r in run.read_metrics()] == [1]


def test_checkpoints_keep_only_the_newest(tmp_path):
    run = RunDir.create(tmp_path / "run", {"method": "toy"})
    for step in (10, 20, 30):
        run.save_checkpoint(step, {"step": step}, keep=2)
    assert [p.name for p in run.checkpoints()] == ["step_000000000020.pt", "step_000000000030.pt"]
    assert run.load_checkpoint(run.latest_checkpoint())["step"] == 30


def test_git_commit_marks_dirty_trees_but_not_the_ignored_results_folder(tmp_path, monkeypatch):
    import subprocess

    from grp_workbench.harness.runs import git_commit

    monkeypatch.delenv("WORKBENCH_GIT_COMMIT", raising=False)
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "code.py").write_text("a = 1\n")
    (repo / "results" / "r.json").write_text("{}\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "init"], check=True)
    assert not git_commit(repo).endswith("-dirty")
    (repo / "results" / "r.json").write_text('{"x": 1}\n')
    assert not git_commit(repo, ignore=repo / "results").endswith("-dirty")
    assert git_commit(repo).endswith("-dirty")
    (repo / "code.py").write_text("a = 2\n")
    assert git_commit(repo, ignore=repo / "results").endswith("-dirty")
    assert git_commit(repo, ignore=tmp_path / "elsewhere").endswith("-dirty")  # outside the repository
    monkeypatch.setenv("WORKBENCH_GIT_COMMIT", "abc123")
    assert git_commit(repo) == "abc123"


def test_claim_is_exclusive_between_processes_and_released_when_the_holder_dies(tmp_path):
    import subprocess
    import sys

    from grp_workbench.harness.runs import claim

    run = tmp_path / "cell"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from grp_workbench.harness.runs import claim\n"
        f"with claim({str(run)!r}) as mine:\n"
        "    print(mine, flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with claim(run) as mine:
            assert mine is False  # another live process holds it
    finally:
        holder.kill()
        holder.wait()
    with claim(run) as mine:
        assert mine is True  # the lock died with its holder


def test_checkpoints_from_before_the_package_rename_still_load(tmp_path, monkeypatch):
    """A run saved when the folders were top-level packages (envs.levels.Level, ...) resumes today."""
    import sys
    import types

    import torch

    from grp_workbench.envs.levels import Level

    old = types.ModuleType("envs.levels")  # the module path such a checkpoint names
    legacy = type("Level", (Level,), {"__module__": "envs.levels"})
    old.Level = legacy
    monkeypatch.setitem(sys.modules, "envs.levels", old)
    level = Level.__new__(legacy)
    level.__dict__.update({"grid": torch.zeros(2, 2).numpy(), "agent": (0, 0), "goal": (1, 1)})
    run = RunDir.create(tmp_path / "run", {"method": "toy"})
    run.save_checkpoint(1, {"algorithm": {"sampler": {"levels": [level]}}})
    monkeypatch.delitem(sys.modules, "envs.levels")
    loaded = run.load_checkpoint(run.latest_checkpoint())["algorithm"]["sampler"]["levels"][0]
    assert type(loaded) is Level and loaded.goal == (1, 1)
