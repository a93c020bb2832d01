"""Reinforcement learning methods: offline (A2PR), model-based (Lipschitz MBRL), level generation (DRED)."""

from grp_workbench.harness.errors import WorkbenchError


class RLError(WorkbenchError):
    """Bad input to an RL method or dataset: the message names the input and the fix."""
