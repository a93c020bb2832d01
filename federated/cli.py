"""Federated learning security: the task model, Flower simulations, attacks, defenses."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from grp_workbench.federated.classifier import SPEC as CLASSIFIER
from grp_workbench.federated.generative.dcgan import GAN_SPEC as GAN
from grp_workbench.federated.generative.dcgan import SPEC as PRIOR
from grp_workbench.federated.generative.diffusion import SPEC as DIFFUSION
from grp_workbench.harness.cli import train_command
from grp_workbench.harness.config import parse_overrides

app = typer.Typer(help="Federated learning security: the task model, Flower simulations, attacks, defenses.",
                  no_args_is_help=True, add_completion=False)
app.command("train-classifier")(train_command(CLASSIFIER))
app.command("train-prior", help="Train the attacker's DCGAN prior: --set prior=in (images no client holds) or "
            "prior=ood (digits 0-4 of them).")(train_command(PRIOR))

app.command("train-gan", help="Train the DCGAN that generative unlearning forgets from, on the classifier's 8,000 "
            "training images (all ten digits); --set exclude=D leaves digit D out (the retraining "
            "reference).")(train_command(GAN))
app.command("train-diffusion", help="Train the class-conditional DDPM that Score Forgetting Distillation unlearns "
            "from, on the classifier's 8,000 training images; --set exclude=D leaves digit D out."
            )(train_command(DIFFUSION))

unlearn = typer.Typer(help="Generative unlearning: make a trained generator forget a class.", no_args_is_help=True,
                      add_completion=False)
app.add_typer(unlearn, name="unlearn")


def _gan_unlearning_command():
    from grp_workbench.federated.unlearning.gan import SPEC as GAN_UNLEARNING

    return train_command(GAN_UNLEARNING)


unlearn.command("gan", help="Adapt-then-Unlearn (--set method=el2|nl2|il2) or a baseline (finetune|ewc|"
                "extrapolation) on a train-gan run: --set gan=<run> --set classifier=<run> --set forget=<digit>."
                )(_gan_unlearning_command())


def _sfd_command():
    from grp_workbench.federated.unlearning.sfd import SPEC as SFD

    return train_command(SFD)


unlearn.command("sfd", help="Score Forgetting Distillation of a train-diffusion run into a one-step generator that "
                "no longer draws one digit: --set teacher=<run> --set classifier=<run> --set forget=<digit> "
                "[--set override=<digit>|rand].")(_sfd_command())


def _diffusion_unlearning_command():
    from grp_workbench.federated.unlearning.diffusion_baselines import SPEC as DIFFUSION_UNLEARNING

    return train_command(DIFFUSION_UNLEARNING)


unlearn.command("diffusion", help="SFD's multi-step peers on a train-diffusion run: --set method=selective-amnesia|"
                "salun --set teacher=<run> --set classifier=<run> --set forget=<digit>."
                )(_diffusion_unlearning_command())


@app.command("simulate")
def simulate_command(
    clients: Annotated[int, typer.Option(min=1, help="simulated clients (SuperNodes)")] = 10,
    overrides: Annotated[list[str], typer.Option("--set", help="app setting key=value (FLSettings), repeatable")] = [],  # noqa: B006
    cpus_per_client: Annotated[float, typer.Option(min=0.01, help="Ray CPUs per client actor")] = 1.0,
) -> None:
    """Run the Flower app (federated/app.py) in Flower's simulation engine; the server records updates."""
    from grp_workbench.federated.app import FLSettings
    from grp_workbench.federated.simulate import simulate

    settings = FLSettings.from_run_config(parse_overrides(overrides))
    summary = simulate(settings, clients, cpus_per_client)
    last = summary["history"][-1]
    typer.echo(f"round {last['round']}: server-side accuracy {last['accuracy']:.4f}; "
               f"{len(summary['captures'])} captured update(s) under {settings.output_dir}/captures")


@app.command("attack")
def attack_command(
    name: Annotated[str, typer.Argument(help="dlg | idlg | ig | ggl | gifd")],
    capture: Annotated[list[Path], typer.Option(help="captured update(s) (runs/.../captures/roundRRR-node<id>.pt), or "
                                                       "a captures/ folder (every capture in it)")],
    prior: Annotated[Optional[Path], typer.Option(help="train-prior run directory (ggl, gifd); its checkpoint is a "
                                                       "pickle: use only runs you trust")] = None,
    classifier: Annotated[Optional[Path], typer.Option(help="train-classifier run directory: adds classifier_accuracy "
                                                             "on the reconstructions (a trusted run: its checkpoint "
                                                             "is a pickle)")] = None,
    preset: Annotated[str, typer.Option(help="paper | quick | tiny")] = "quick",
    seed: Annotated[int, typer.Option(help="attack seed (initializations, restarts)")] = 0,
    out: Annotated[Path, typer.Option(help="folder for metrics.json and the image grid")] = Path("reports/attack"),
    overrides: Annotated[list[str], typer.Option("--set", help="attack setting key=value, repeatable")] = [],  # noqa: B006
) -> None:
    """Invert captured FedSGD updates; PSNR / SSIM / label accuracy against the recomputed client batch."""
    from grp_workbench.federated import FederatedError
    from grp_workbench.federated.attack import load_classifier, run_attack, save_grid
    from grp_workbench.federated.generative.dcgan import load_generator
    from grp_workbench.harness.runs import atomic_write_json

    generator = load_generator(prior) if prior else None
    evaluator = load_classifier(classifier) if classifier else None
    results = {}
    files = [found for path in capture for found in (sorted(path.glob("*.pt")) if path.is_dir() else [path])]
    if not files:
        raise FederatedError(f"no capture (*.pt) in {', '.join(map(str, capture))}; run `workbench federated "
                             "simulate` first.")
    for path in files:
        result = run_attack(name, path, generator, preset, seed, overrides=parse_overrides(overrides),
                            classifier=evaluator)
        results[str(path)] = result["metrics"]
        grid = save_grid({name: result["images"]}, result["originals"], out / f"{Path(path).stem}-{name}.png")
        shown = ", ".join(f"{k} {v:.3g}" for k, v in result["metrics"].items()
                          if k in ("psnr", "ssim", "label_accuracy", "classifier_accuracy", "iters_per_s"))
        typer.echo(f"{path}: {shown} ({grid})")
    atomic_write_json(out / f"metrics-{name}.json", results)
