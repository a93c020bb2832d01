"""Packaging that pyproject.toml cannot say alone: one import package over the top-level folders.

The repository keeps ``harness/``, ``rl/``, ``envs/``, ``federated/`` and ``recsys/`` at the top (the
layout a reader sees first), but installs them as ``grp_workbench.harness``, ``grp_workbench.rl``, ...
so that ``pip install`` adds one top-level import package to site-packages, not five names that
other PyPI projects already own (``rl``, ``envs``, ``harness``, ``federated``, ``recsys``). The
package list is found, not written out, so a new sub-folder with an ``__init__.py`` ships by itself.
Everything else (metadata, dependencies, scripts, package data) is in pyproject.toml.
"""

from setuptools import find_packages, setup

PACKAGE = "grp_workbench"
FOLDERS = ("harness", "rl", "envs", "federated", "recsys")

setup(
    package_dir={PACKAGE: PACKAGE, **{f"{PACKAGE}.{folder}": folder for folder in FOLDERS}},
    packages=[PACKAGE]
    + [f"{PACKAGE}.{name}" for name in find_packages(include=[p for f in FOLDERS for p in (f, f"{f}.*")])],
)
