"""``workbench rl ...`` commands: offline training and dataset building."""

from typing import Annotated, Optional

import typer

from envs.behaviour import SPEC as BEHAVIOUR
from harness.cli import train_command
from rl.offline.a2pr import SPEC as A2PR
from rl.offline.td3bc import SPEC as TD3BC

app = typer.Typer(help="Reinforcement learning: offline RL (TD3+BC, A2PR) on D4RL-format datasets.",
                  no_args_is_help=True)
train_app = typer.Typer(help="Train an offline RL method: --dataset NAME|FILE.hdf5|minari:ID|d4rl:NAME.",
                        no_args_is_help=True)
for spec in (TD3BC, A2PR):
    train_app.command(spec.name)(train_command(spec))
app.add_typer(train_app, name="train")

data_app = typer.Typer(help="Offline datasets built locally (cached under $WORKBENCH_CACHE/offline_rl).",
                       no_args_is_help=True)


@data_app.command("build")
def build_dataset(
    name: Annotated[str, typer.Argument(help="e.g. pointreach-medium")],
    seed: Annotated[int, typer.Option(help="behaviour-policy and environment seed")] = 0,
    steps: Annotated[Optional[int], typer.Option(help="transitions (default: the builder's)")] = None,
) -> None:
    from envs.datasets import build

    path = build(name, seed=seed, n_steps=steps)
    typer.echo(f"built {name}: {path}")


data_app.command("train-behaviour", help="Train SAC behaviour policies: --set env=hopper (resumable run).")(
    train_command(BEHAVIOUR))


@data_app.command("export-behaviour")
def export_behaviour(
    run_dir: Annotated[str, typer.Argument(help="a finished train-behaviour run directory")],
    medium_fraction: Annotated[float, typer.Option(help="medium: first snapshot with this share of expert")] = 1 / 3,
    out: Annotated[Optional[str], typer.Option(help="default: envs/behaviour_policies/<family>.pt")] = None,
) -> None:
    from envs.behaviour import export_behaviour_policies

    typer.echo(f"exported: {export_behaviour_policies(run_dir, medium_fraction, out)}")


app.add_typer(data_app, name="data")
