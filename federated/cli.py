"""``workbench federated ...`` commands."""

from typing import Annotated

import typer

from federated.classifier import SPEC as CLASSIFIER
from federated.generative.dcgan import SPEC as PRIOR
from harness.cli import train_command
from harness.config import parse_overrides

app = typer.Typer(help="Federated learning security: the task model, Flower simulations, attacks, defenses.",
                  no_args_is_help=True)
app.command("train-classifier")(train_command(CLASSIFIER))
app.command("train-prior", help="Train the attacker's DCGAN prior: --set prior=in (images no client holds) or "
            "prior=ood (digits 0-4 of them).")(train_command(PRIOR))


@app.command("simulate")
def simulate_command(
    clients: Annotated[int, typer.Option(help="simulated clients (SuperNodes)")] = 10,
    overrides: Annotated[list[str], typer.Option("--set", help="app setting key=value (FLSettings), repeatable")] = [],  # noqa: B006
    cpus_per_client: Annotated[float, typer.Option(help="Ray CPUs per client actor")] = 1.0,
) -> None:
    """Run the Flower app (federated/app.py) in Flower's simulation engine; the server records updates."""
    from federated.app import FLSettings
    from federated.simulate import simulate

    settings = FLSettings.from_run_config(parse_overrides(overrides))
    summary = simulate(settings, clients, cpus_per_client)
    last = summary["history"][-1]
    typer.echo(f"round {last['round']}: server-side accuracy {last['accuracy']:.4f}; "
               f"{len(summary['captures'])} captured update(s) under {settings.output_dir}/captures")
