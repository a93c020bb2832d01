"""Robust recommendation: MF / LightGCN under poisoning attacks, APR and VAT."""

from grp_workbench.harness.errors import WorkbenchError


class RecsysError(WorkbenchError):
    """Bad input to a recommender component; the message names the input and the fix."""
