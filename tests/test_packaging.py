"""The built wheel: one import package in site-packages, working from outside the checkout.

The wheel is built offline from a copy of the sources (no build isolation, no dependencies) and
installed into a fresh virtual environment that borrows this environment's packages (torch,
gymnasium, flwr, ...) through a ``.pth`` line, so nothing is downloaded. Every check runs in that
environment with a working directory outside the checkout, and checks where each module came from.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "README.md", "grp_workbench", "harness", "rl", "envs", "federated", "recsys"]

PROBE = """
import importlib, json, sys
import gymnasium
env = gymnasium.make("grp_workbench.envs:workbench/CaveEscape-v0")
components = {}
for name, ref in json.loads(sys.argv[1]).items():
    module_name, attr = ref.split(":")
    module = importlib.import_module(module_name)
    components[name] = [module.__file__, type(getattr(module, attr)).__name__]
from grp_workbench.rl.ued.ppo import LEVEL_SETS
from grp_workbench.envs.behaviour import POLICY_DIR
print(json.dumps({
    "env_module": sys.modules[type(env.unwrapped).__module__].__file__,
    "components": components,
    "level_sets": sorted(p.name for p in LEVEL_SETS.glob("*.npz")),
    "behaviour_policies": sorted(p.name for p in POLICY_DIR.glob("*.pt")),
}))
"""


def _run(command, **kwargs):
    # never the test process's import path: the checkout must not leak into the fresh venv
    kwargs.setdefault("env", {key: value for key, value in os.environ.items() if key != "PYTHONPATH"})
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_adds_one_import_package_that_works_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--wheel-dir", str(dist), str(source)])
    (wheel,) = dist.glob("grp_workbench-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the venv's own
    before = set(os.listdir(site))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)])
    added = set(os.listdir(site)) - before
    assert {name for name in added if not name.endswith(".dist-info")} == {"grp_workbench"}, added
    assert len(added) == 2, added

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    help_text = _run([str(venv / "bin" / "workbench"), "--help"], cwd=outside, env=env)
    for domain in ("rl", "federated", "recsys"):
        assert domain in help_text.stdout
    assert "unavailable" not in help_text.stderr

    components = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    probe = _run([str(python), "-c", PROBE, json.dumps(components)], cwd=outside, env=env)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    installed = str(site / "grp_workbench")
    assert found["env_module"].startswith(installed)
    assert found["components"]["serverapp"][1] == "ServerApp"
    assert found["components"]["clientapp"][1] == "ClientApp"
    assert all(path.startswith(installed) for path, _ in found["components"].values())
    assert {"train.npz", "test.npz"} <= set(found["level_sets"])
    assert found["behaviour_policies"] == ["halfcheetah.pt", "hopper.pt", "walker2d.pt"]
