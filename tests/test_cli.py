import subprocess
import sys

import click
import pytest
import typer.main
from typer.testing import CliRunner

from grp_workbench.harness.cli import app

runner = CliRunner()


def _all_commands(command: click.Command, path=()):
    yield path
    if isinstance(command, click.Group):  # domains load lazily: ask the group, not its .commands
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _all_commands(command.get_command(ctx, name), (*path, name))


COMMANDS = list(_all_commands(typer.main.get_command(app)))


def test_top_level_help_lists_domains_and_verbs():
    out = runner.invoke(app, ["--help"]).output
    for word in ("federated", "runs", "report", "info"):
        assert word in out
    assert ("federated", "train-classifier") in COMMANDS


def test_top_level_help_imports_no_method_and_no_torch():
    probe = ("import sys; from grp_workbench.harness.cli import main; sys.argv = ['workbench', '--help']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m == 'torch' or m.endswith('.cli') and 'grp_workbench' in m))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "rl  " in result.stdout and "federated" in result.stdout and "recsys" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "['grp_workbench.harness.cli']"


def test_a_domain_that_fails_to_import_fails_alone(monkeypatch):
    from importlib.metadata import EntryPoint

    import grp_workbench.harness.cli as cli

    broken = EntryPoint(name="broken", value="grp_workbench.no_such_domain.cli:app", group="grp_workbench.cli")
    installed = cli._domains()
    monkeypatch.setattr(cli, "_domains", lambda: {**installed, "broken": broken})
    result = runner.invoke(app, ["broken", "x"])
    assert result.exit_code == 1 and "domain 'broken' is unavailable (ModuleNotFoundError" in result.output
    assert runner.invoke(app, ["rl", "--help"]).exit_code == 0


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "workbench")
def test_every_command_help_works(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def _workbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "grp_workbench.harness.cli", *args],
                          capture_output=True, text=True, cwd=cwd)


def test_console_script_reports_user_errors_without_traceback(tmp_path):
    for args, message in [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--set", "lrr=1"], "no field 'lrr'. Did you mean lr"),
        (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "--device"),
        (["--data-dir", str(tmp_path / "missing")], "does not exist. Point --data-dir"),
    ]:
        result = _workbench("federated", "train-classifier", "--run-dir", str(tmp_path / "r"), *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_train_then_refuse_overwrite_then_resume_then_list_and_report(tmp_path):
    run_dir = str(tmp_path / "runs" / "clf")
    first = _workbench("federated", "train-classifier", "--preset", "tiny", "--run-dir", run_dir, "--quiet")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("finished:")
    again = _workbench("federated", "train-classifier", "--preset", "tiny", "--run-dir", run_dir)
    assert again.returncode == 2 and "already exists (finished at step 40)" in again.stderr
    resumed = _workbench("federated", "train-classifier", "--preset", "tiny", "--run-dir", run_dir, "--resume")
    assert resumed.returncode == 0 and "finished" in resumed.stdout
    listed = _workbench("runs", str(tmp_path / "runs"))
    assert "classifier" in listed.stdout and "finished at step 40" in listed.stdout
    report = _workbench("report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "| classifier |" in (tmp_path / "report" / "report.md").read_text()
