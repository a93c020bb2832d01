"""Federated learning security: Flower simulations, gradient inversion, defenses, generative unlearning."""

from grp_workbench.harness.errors import WorkbenchError


class FederatedError(WorkbenchError):
    """Bad input to a federated / image-data component; the message names the input and the fix."""
