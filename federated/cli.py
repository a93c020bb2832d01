"""``workbench federated ...`` commands."""

import typer

from federated.classifier import SPEC as CLASSIFIER
from harness.cli import train_command

app = typer.Typer(help="Federated learning security: the task model, Flower simulations, attacks, defenses.",
                  no_args_is_help=True)
app.command("train-classifier")(train_command(CLASSIFIER))
