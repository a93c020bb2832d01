"""The shared layer: device, seeding, configs, run directories, trainer, evaluation, reports, CLI.

Nothing here knows about a particular method; methods plug in through the small ``Algorithm``
protocol in ``harness.trainer``.
"""

from grp_workbench.harness.errors import HarnessError, WorkbenchError

__all__ = ["HarnessError", "WorkbenchError"]
