"""Robust recommendation: MF / LightGCN under poisoning, with APR and VAT."""

import typer

from grp_workbench.harness.cli import train_command
from grp_workbench.recsys.train import SPECS

app = typer.Typer(help="Robust recommendation: MF / LightGCN under poisoning, with APR and VAT.", no_args_is_help=True,
                  add_completion=False)
train_app = typer.Typer(help="Train a recommender; the method is the defense (bpr = none, apr, vat). "
                        "Choose the backbone and attack with --set model=lightgcn attack=bandwagon.",
                        no_args_is_help=True)
for name, spec in SPECS.items():
    train_app.command(name)(train_command(spec))
app.add_typer(train_app, name="train")
