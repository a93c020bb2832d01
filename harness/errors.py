"""One exception family for everything a user can get wrong.

Each package raises its own subclass (``HarnessError``, ``federated.FederatedError``, ...); the CLI
catches ``WorkbenchError`` and prints only the message, which names the bad input and the fix.
"""


class WorkbenchError(Exception):
    """Base class of user-facing errors."""


class HarnessError(WorkbenchError):
    """Bad input to the shared harness: configs, devices, run directories, dataset paths."""


class HarnessWarning(UserWarning):
    """Something a user should know that does not stop the command (an unfinished run used as an input)."""
