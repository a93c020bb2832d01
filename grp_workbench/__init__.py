"""grp-workbench: generalization, robustness and privacy methods on one PyTorch harness.

This is the project's one import package. The repository keeps its top-level folders (``harness/``,
``rl/``, ``envs/``, ``federated/``, ``recsys/``) where a reader looks first; packaging
(``setup.py``) installs each of them as a sub-package of this one, so code imports
``grp_workbench.harness``, ``grp_workbench.rl.offline`` and so on, and installing the project adds
nothing else to ``site-packages``.

Importing ``grp_workbench.envs`` registers the Gymnasium environments (``workbench/CaveEscape-v0``,
``workbench/PointReach-v0``, ``workbench/Procgen-v0``); ``gymnasium.make`` does it on its own with
``gymnasium.make("grp_workbench.envs:workbench/CaveEscape-v0")``.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# In a checkout, or a Flower app bundle made from one (``flwr run .``), the sub-packages are this
# folder's siblings; an installed wheel has them inside it and never takes this branch.
_HERE = Path(__file__).resolve().parent
if not (_HERE / "harness").is_dir() and (_HERE.parent / "harness" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))  # noqa: F821 (a package's __path__ is set by the import system)

try:
    __version__ = version("grp-workbench")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
