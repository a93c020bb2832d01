"""Reinforcement learning: offline RL (TD3+BC, A2PR, BC) and its datasets; model-based RL (MBPO and single-model
variants); level generation (DR, PLR, DRED)."""

from typing import Annotated, Optional

import typer

from grp_workbench.envs.behaviour import SPEC as BEHAVIOUR
from grp_workbench.harness.cli import train_command
from grp_workbench.rl.mbrl.mbpo import SPEC as MBPO
from grp_workbench.rl.offline.a2pr import SPEC as A2PR
from grp_workbench.rl.offline.bc import SPEC as BC
from grp_workbench.rl.offline.td3bc import SPEC as TD3BC
from grp_workbench.rl.ued.level_vae import SPEC as LEVEL_VAE
from grp_workbench.rl.ued.ppo import SPECS as UED_SPECS
from grp_workbench.rl.ued.procgen_ppo import SPECS as PROCGEN_SPECS

app = typer.Typer(help="Reinforcement learning: offline RL (TD3+BC, A2PR) on D4RL-format datasets; level "
                  "generation for zero-shot transfer (DR, uniform, PLR, DRED) on CaveEscape.",
                  no_args_is_help=True, add_completion=False)
train_app = typer.Typer(help="Train an offline RL method: --dataset NAME|FILE.hdf5|minari:ID|d4rl:NAME.",
                        no_args_is_help=True)
for spec in (TD3BC, A2PR, BC):
    train_app.command(spec.name)(train_command(spec))
train_app.command(MBPO.name)(train_command(MBPO))  # online: MBPO and its single-model variants (--set variant=)
for spec in (*UED_SPECS.values(), LEVEL_VAE):  # CaveEscape students (--set levels=train.npz) and DRED's VAE
    train_app.command(spec.name)(train_command(spec))
for spec in PROCGEN_SPECS.values():  # PPO on Procgen levels chosen by PLR or uniformly (needs `make procgen`)
    train_app.command(spec.name)(train_command(spec))
app.add_typer(train_app, name="train")

data_app = typer.Typer(help="Offline datasets built locally (cached under $WORKBENCH_CACHE/offline_rl).",
                       no_args_is_help=True)


@data_app.command("build")
def build_dataset(
    name: Annotated[str, typer.Argument(help="e.g. pointreach-medium")],
    seed: Annotated[int, typer.Option(help="behaviour-policy and environment seed")] = 0,
    steps: Annotated[Optional[int], typer.Option(help="transitions, at least 1 (default: the builder's)")] = None,
) -> None:
    """Build a dataset into the cache, one file per (name, seed, steps, behaviour policy, builder
    version); the same inputs again reuse that file. NAME then means this build."""
    from grp_workbench.envs.datasets import build, cached_build_path

    reused = cached_build_path(name, seed, steps).is_file()
    path = build(name, seed=seed, n_steps=steps)
    typer.echo(f"{'reused' if reused else 'built'} {name}: {path}")


@data_app.command("export-minari")
def export_minari_dataset(
    name: Annotated[str, typer.Argument(help="a built name (hopper-medium) or a D4RL-format .hdf5 path")],
    dataset_id: Annotated[str, typer.Option("--id", help="Minari id, e.g. workbench/hopper/medium-v0")],
) -> None:
    """Copy a D4RL-format dataset into a local Minari dataset (read back with --dataset minari:ID)."""
    from grp_workbench.envs.datasets import export_minari
    from grp_workbench.rl.offline.datasets import dataset_file

    path = dataset_file(name)
    typer.echo(f"exported {name} as Minari dataset {export_minari(path, dataset_id)}")


@data_app.command("info")
def dataset_info(
    names: Annotated[list[str], typer.Argument(help="built names (hopper-medium) or .hdf5 paths")],
) -> None:
    """One table row per dataset: transitions, episodes, behaviour returns and reference returns."""
    from grp_workbench.rl.offline.datasets import dataset_file, describe_hdf5

    typer.echo("| dataset | transitions | episodes | return mean [min, max] | normalized mean | random / expert ref |")
    typer.echo("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        d = describe_hdf5(dataset_file(name))
        typer.echo(f"| {d['name']} | {d['transitions']:,} | {d['episodes']:,} | {d['return_mean']:.0f} "
                   f"[{d['return_min']:.0f}, {d['return_max']:.0f}] | {d['normalized_return_mean']:.1f} | "
                   f"{d['ref_min_return']:.0f} / {d['ref_max_return']:.0f} ({d['score_source']}) |")


data_app.command("train-behaviour", help="Train SAC behaviour policies: --set env=hopper (resumable run).")(
    train_command(BEHAVIOUR))


@data_app.command("export-behaviour")
def export_behaviour(
    run_dir: Annotated[str, typer.Argument(help="a finished train-behaviour run directory")],
    medium_fraction: Annotated[float, typer.Option(min=0.0, max=1.0,
                                                   help="medium: first snapshot with this share of expert")] = 1 / 3,
    out: Annotated[Optional[str], typer.Option(help="default: envs/behaviour_policies/<family>.pt")] = None,
) -> None:
    from grp_workbench.envs.behaviour import export_behaviour_policies

    typer.echo(f"exported: {export_behaviour_policies(run_dir, medium_fraction, out)}")


app.add_typer(data_app, name="data")

levels_app = typer.Typer(help="CaveEscape level sets (envs/levels.py).", no_args_is_help=True)


@levels_app.command("build")
def build_levels(
    out: Annotated[str, typer.Option(help="folder for train.npz, test.npz, held_out.npz")] = "envs/level_sets",
    train_per_structure: Annotated[int, typer.Option(min=1, help="training levels per training structure")] = 128,
    test_per_structure: Annotated[int, typer.Option(min=1, help="held-out levels per training structure")] = 64,
    held_out_per_structure: Annotated[int, typer.Option(min=1, help="levels per held-out structure (the "
                                                        "paper's 8)")] = 8,
    seed: Annotated[int, typer.Option(help="generator seed; each set draws from its own stream (seed, set)")] = 123456,
    sets: Annotated[str, typer.Option(help="comma-separated: which of train, test, held_out to build")] =
    "train,test,held_out",
    held_out_structures: Annotated[Optional[str], typer.Option(help="comma-separated WFC presets for held_out "
                                                               "(default: the paper's 14)")] = None,
) -> None:
    """Generate the training set, a test set of the same structures and a set of held-out structures;
    a build whose sets would share a level (with each other or with sets already in --out) stops."""
    from pathlib import Path

    from grp_workbench.envs.levels import (
        HELD_OUT_STRUCTURES,
        LEVEL_SET_STREAMS,
        TRAIN_STRUCTURES,
        generate_level_set,
        load_levels,
        save_levels,
        shared_levels,
    )
    from grp_workbench.rl import RLError

    chosen = [name.strip() for name in sets.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(LEVEL_SET_STREAMS))
    if unknown:
        raise RLError(f"--sets {sets!r}: unknown set(s) {', '.join(unknown)}; choose from "
                      f"{', '.join(LEVEL_SET_STREAMS)}.")
    held_out = tuple(s.strip() for s in held_out_structures.split(",")) if held_out_structures else HELD_OUT_STRUCTURES
    plan = {"train": (TRAIN_STRUCTURES, train_per_structure), "test": (TRAIN_STRUCTURES, test_per_structure),
            "held_out": (held_out, held_out_per_structure)}
    built, existing = {}, {}
    for name in LEVEL_SET_STREAMS:
        path = Path(out) / f"{name}.npz"
        if name not in chosen or path.is_file():
            if path.is_file():
                existing[name] = load_levels(path)
                if name in chosen:
                    typer.echo(f"{path} exists; kept (delete it to rebuild)")
            continue
        structures, per_structure = plan[name]
        built[name] = generate_level_set(structures, per_structure, seed, progress=True,
                                         stream=LEVEL_SET_STREAMS[name])
    overlaps = shared_levels(existing | built)
    if overlaps:
        detail = "; ".join(f"{a} and {b} share {n} level(s)" for a, b, n in overlaps)
        raise RLError(f"level sets would overlap ({detail}): choose another --seed, or rebuild the sets together.")
    for name, levels in built.items():
        structures = plan[name][0]
        typer.echo(f"{name}: {len(levels)} levels of {', '.join(structures)} -> "
                   f"{save_levels(levels, Path(out) / f'{name}.npz')}")


app.add_typer(levels_app, name="levels")


@app.command("drift")
def policy_drift(
    run_dirs: Annotated[list[str], typer.Argument(help="`workbench rl train td3bc|a2pr` run directories")],
    states: Annotated[int, typer.Option(min=1, help="dataset states to compare on (the same for every run)")] = 4096,
) -> None:
    """Per seed of trained offline runs: distance of the policy's actions from the data's and the
    value the critic believes the policy gains over them (why a seed collapsed, if one did)."""
    from grp_workbench.harness.config import config_from_dict
    from grp_workbench.harness.device import make_policy
    from grp_workbench.harness.runs import RunDir
    from grp_workbench.rl import RLError

    specs = {spec.name: spec for spec in (TD3BC, A2PR)}
    runs = [RunDir(run_dir) for run_dir in run_dirs]
    for run in runs:
        method = run.header.get("method") if run.exists() else None
        if method not in specs:
            raise RLError(f"{run.path} is not a td3bc or a2pr run directory (method: {method}); pass the "
                          "folder `workbench rl train td3bc|a2pr` wrote.")
    typer.echo("| run | seed | last normalized score | action MSE to data | Q1(s, a) | Q1(s, pi) - Q1(s, a) "
               "| actions at the bound |")
    typer.echo("| --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        method = run.header["method"]
        spec = specs[method]
        config = config_from_dict(spec.config_cls, run.header["config"])
        algorithm = spec.build(config, make_policy("cpu", "fp32"))
        state = run.last_algorithm_state("checkpoint", f"train it with `workbench rl train {method}`.")
        algorithm.load_state_dict(state)
        drift = algorithm.policy_drift(n_states=states)
        last_eval = (run.read_metrics("eval") or [{}])[-1]
        for k in range(config.n_seeds):
            key = "normalized_score" if config.n_seeds == 1 else f"normalized_score/seed{config.seed + k}"
            score = f"{last_eval[key]:.1f}" if key in last_eval else "-"
            typer.echo(f"| {run.header.get('task', run.path.name)} {method} | {config.seed + k} | {score} | "
                       f"{drift['action_mse'][k]:.3f} | {drift['q_data'][k]:.1f} | {drift['q_gain'][k]:+.2f} | "
                       f"{100 * drift['saturated_fraction'][k]:.1f}% |")


@app.command("eval")
def evaluate_student(
    run_dir: Annotated[str, typer.Argument(help="a `workbench rl train dr|uniform|plr|dred` run directory")],
    levels: Annotated[str, typer.Option(help="level set (.npz), zero-shot: every level, or --limit per structure")],
    seed: Annotated[int, typer.Option(help="seeds every draw: episode resets and sampled actions")] = 0,
    episodes: Annotated[int, typer.Option(min=1, help="episodes per level, stochastic policy")] = 3,
    greedy: Annotated[bool, typer.Option("--greedy", help="one episode per level, argmax actions")] = False,
    limit: Annotated[int, typer.Option(min=0, help="> 0: this many levels, the same number per structure")] = 0,
) -> None:
    """Zero-shot evaluation of a trained student: solved rate and return over levels with a 95%
    bootstrap CI over levels, and the solved rate of each structure. The same seed gives the same
    numbers."""
    import torch

    from grp_workbench.envs.cave_escape import CaveEscapeEnv
    from grp_workbench.envs.levels import load_levels
    from grp_workbench.harness.evaluation import aggregate_mean, stratified_bootstrap_ci
    from grp_workbench.harness.runs import RunDir
    from grp_workbench.rl import RLError
    from grp_workbench.rl.ued.ppo import METHODS, ActorCritic, level_set_metrics, play, require_solvable, stratified

    run = RunDir(run_dir)
    method = run.header.get("method") if run.exists() else None
    if method not in METHODS:
        raise RLError(f"{run_dir} is not a CaveEscape student run (method: {method}); pass the folder "
                      f"`workbench rl train {'|'.join(METHODS)}` wrote.")
    state = run.last_algorithm_state("trained student", "train one with `workbench rl train dred|plr|uniform|dr`.")
    config = run.header["config"]
    net = ActorCritic(hidden=config["hidden"], recurrent=config.get("recurrent", False))
    net.load_state_dict(state["net"])
    level_set = require_solvable(stratified(load_levels(levels), limit), levels)
    env_list = [CaveEscapeEnv(level_set[0], size=level_set[0].grid.shape[0], max_steps=config["max_episode_steps"])
                for _ in range(16)]
    returns = play(net, env_list, level_set, torch.Generator().manual_seed(seed), greedy=greedy,
                   episodes=1 if greedy else episodes)
    solved = (returns > 0).mean(1)
    low, high = stratified_bootstrap_ci(solved[:, None], aggregate_mean, seed=seed)  # levels as the runs
    how = "one greedy episode" if greedy else f"{returns.shape[1]} stochastic episodes"
    typer.echo(f"{len(level_set)} levels, {how} each: solved rate {solved.mean():.3f} [95% CI {low:.3f}, "
               f"{high:.3f}] over levels, return {returns.mean():.3f}")
    for key, value in level_set_metrics("set", level_set, returns).items():
        if key.startswith("set/solved_rate/"):
            typer.echo(f"  {key.removeprefix('set/solved_rate/')}: {value:.3f}")
