"""`make demo`: a short end-to-end run of every method that exists, then one report.

Each method trains with a demo budget (its ``quick`` preset shortened by the settings below, sized
so that the whole demo takes under 10 minutes on 2 idle CPU cores) into ``runs/demo/<method>/...``.
A rerun reuses what an earlier demo finished with the same settings (and says so), resumes what it
left unfinished, and retrains what it made with other settings. Every step prints a line when it
starts and ends, and off a terminal a line every 30 s; the report (tables, figures and the time of
each step) goes to ``reports/demo/report.md``. ``python scripts/demo.py --fresh`` measures the
whole demo from nothing (it deletes ``runs/demo`` and ``reports/demo`` first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from grp_workbench.federated.classifier import SPEC as CLASSIFIER
from grp_workbench.federated.generative.dcgan import GAN_SPEC
from grp_workbench.federated.generative.dcgan import SPEC as PRIOR
from grp_workbench.federated.unlearning.gan import SPEC as GAN_UNLEARNING
from grp_workbench.federated.unlearning.sfd import SPEC as SFD
from grp_workbench.harness.config import build_config
from grp_workbench.harness.errors import WorkbenchError
from grp_workbench.harness.progress import step
from grp_workbench.harness.report import write_report
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import config_changes, train, train_cell
from grp_workbench.recsys.train import SPECS as RECSYS
from grp_workbench.rl.mbrl.mbpo import SPEC as MBPO
from grp_workbench.rl.offline.a2pr import SPEC as A2PR
from grp_workbench.rl.offline.td3bc import SPEC as TD3BC
from grp_workbench.rl.ued.level_vae import SPEC as LEVEL_VAE
from grp_workbench.rl.ued.ppo import SPECS as UED

# Demo budgets: each method's quick preset cut to what shows it working (measured on 2 idle CPU
# cores, 2026-11-30: the classifier reaches 0.97-0.98 held-out accuracy by step 250-500; TD3+BC and
# A2PR pass the data's behaviour level on PointReach by step 250; DRED solves some levels).
# offline RL on a dataset the project builds in seconds; the MuJoCo ones take hours of SAC training
OFFLINE = {"dataset": "pointreach-medium", "total_steps": 400, "eval_every": 200, "checkpoint_every": 200}
RECSYS_DEMO = {"attack": "bandwagon", "total_steps": 40, "eval_every": 20, "begin_adv": 20}

# SFD distils the diffusion_unlearning benchmark's pinned teacher: a teacher good enough to unlearn from
# takes thousands of CPU steps (benchmarks/diffusion_unlearning), more than a demo can train
PINNED_TEACHER = Path("benchmarks/diffusion_unlearning/pinned/teacher")

# (method spec, overrides) for every method in the workbench; each new method adds its line and the
# metrics its report tables should show.
DEMO_METHODS = [
    (CLASSIFIER, {"total_steps": 400, "eval_every": 200, "checkpoint_every": 200}),
    # attacked vs defended recommender: bandwagon poisoning of MF, without a defense and with VAT
    (RECSYS["bpr"], RECSYS_DEMO),
    (RECSYS["vat"], RECSYS_DEMO),
    # offline RL: the TD3+BC baseline and A2PR on the same data
    (TD3BC, OFFLINE),
    (A2PR, OFFLINE),
    # model-based RL: one dynamics model with the spectral-normalized, noise-smoothed critic on PointReach
    # (MuJoCo's Hopper takes hours of CPU: benchmarks/mbrl)
    (MBPO, {"env": "workbench/PointReach-v0", "variant": "single-sn-adv", "total_steps": 600, "model_train_freq": 50,
            "rollout_batch_size": 1000, "updates_per_step": 5, "model_max_epochs": 0, "model_batch_size": 32,
            "hidden": 64, "model_hidden": 32, "batch_size": 64, "initial_alpha": 0.05, "lr": 1e-3,
            "eval_every": 200, "eval_episodes": 5, "checkpoint_every": 200, "log_every": 50}),
    # the gradient-inversion attacker's DCGAN prior (images no Flower client holds), shortened
    (PRIOR, {"total_steps": 400, "eval_every": 200, "checkpoint_every": 200}),
    # DRED: the level VAE on the shipped training levels, then a short student run on CaveEscape
    (LEVEL_VAE, {"total_steps": 1000, "eval_every": 500, "checkpoint_every": 500}),
    (UED["dred"], {"num_envs": 32, "num_steps": 256, "total_steps": 16384, "eval_every": 8192,
                   "checkpoint_every": 8192, "eval_limit": 16, "num_pairs": 2, "interpolations": 3}),
    # generative unlearning: a DCGAN on all ten digits, then Adapt-then-Unlearn (EL2) forgets the 8s (the
    # 600-step GAN draws 21% 8s and under 1% 1s: the paper's digit 1 would show little)
    (GAN_SPEC, {"total_steps": 600, "eval_every": 300, "checkpoint_every": 300}),
    (GAN_UNLEARNING, {"forget": 8, "method": "el2", "adapted_models": 2, "adapt_steps": 60, "unlearn_steps": 300,
                      "eval_samples": 2000, "eval_every": 180, "checkpoint_every": 180}),
    # diffusion unlearning: Score Forgetting Distillation makes the pinned class-conditional DDPM's one-step
    # student forget the 0s (the teacher is told to draw 1s instead); in the benchmark's runs the share of
    # 0-conditioned samples still drawn as 0s was 0.82-0.84 at step 100 and 0.12-0.16 at step 200; this
    # demo step at 200 steps (193 s, 2 threads): none of its 20 evaluation samples a 0, 70% drawn as 1s
    (SFD, {"forget": 0, "override": "1", "total_steps": 200, "eval_every": 100, "checkpoint_every": 100,
           "log_every": 10, "eval_per_class": 20}),
]
REPORT_METRICS = ["accuracy", "recall@20", "ndcg@20", "t_hr@50", "normalized_score", "return", "lipschitz_max",
                  "coverage_mse",
                  "train/cell_accuracy", "in_dist/solved_rate", "pul", "fid", "cond_accuracy", "forget_rate",
                  "retained_acc"]


def level_picture(out: str, vae_run: str) -> None:
    """Training levels beside levels DRED's VAE generates between pairs of them."""
    import numpy as np
    import torch

    from grp_workbench.envs.levels import load_levels, save_level_picture
    from grp_workbench.rl.ued.level_vae import load_level_vae
    from grp_workbench.rl.ued.ppo import LEVEL_SETS

    vae = load_level_vae(vae_run)
    levels = load_levels(LEVEL_SETS / "train.npz")
    generated, _ = vae.interpolate(vae.encode_levels(levels), levels, 2, 4, torch.Generator().manual_seed(0))
    picks = np.random.default_rng(0).choice(len(levels), 8, replace=False)
    path = save_level_picture({"training": [levels[i] for i in picks], "generated": generated[:8]},
                              Path(out) / "levels.png")
    with open(Path(out) / "report.md", "a") as f:
        f.write("\n## CaveEscape levels: training levels and DRED's generated levels\n\n"
                f"![training and generated levels]({path.name})\n")


def gradient_inversion_demo(runs: str, out: str, prior_run: str) -> None:
    """A Flower simulation whose curious server captures one FedSGD update, inverted by IG and GIFD."""
    from grp_workbench.federated.app import FLSettings
    from grp_workbench.federated.attack import run_attack, save_grid
    from grp_workbench.federated.generative.dcgan import load_generator
    from grp_workbench.federated.simulate import simulate

    captures = Path(runs) / "federated" / "captures"
    how = "reused capture"
    if not captures.is_dir():
        simulate(FLSettings(num_server_rounds=1, fraction_train=1.0, batch_size=1, capture_rounds="1",
                            capture_clients="1", output_dir=str(captures.parent)), num_clients=3)
        how = "simulated"
    else:
        print(f"reused the capture of an earlier demo in {captures}")
    capture = sorted(captures.glob("*.pt"))[0]
    prior = load_generator(prior_run)
    rows, lines = {}, ["| attack | PSNR (dB) | SSIM | label accuracy | seconds |", "| --- | --- | --- | --- | --- |"]
    for name in ("ig", "gifd"):
        result = run_attack(name, capture, prior, preset="quick")
        rows[name] = result["images"]
        m = result["metrics"]
        lines.append(f"| {name} | {m['psnr']:.1f} | {m['ssim']:.3f} | {m['label_accuracy']:.2f} | {m['seconds']:.0f} |")
        originals = result["originals"]
        print(f"gradient inversion {name}: PSNR {m['psnr']:.1f} dB ({m['seconds']:.0f} s)")
    grid = save_grid(rows, originals, Path(out) / "gradient_inversion.png")
    with open(Path(out) / "report.md", "a") as f:
        f.write("\n## Gradient inversion of a captured Flower update\n\n"
                f"Flower simulation (3 clients, FedSGD, batch 1), the curious server's capture `{capture.name}`, "
                "attacked with the quick presets; GIFD uses the DCGAN prior above.\n\n"
                + "\n".join(lines) + f"\n\n![originals and reconstructions]({grid.name})\n")
    return how


def gan_unlearning_demo(out: str, unlearning_run: str) -> None:
    """The same latents before and after unlearning: the forgotten digit's samples and some others."""
    import torch

    from grp_workbench.federated.attack import save_grid
    from grp_workbench.federated.generative.dcgan import load_generator
    from grp_workbench.federated.unlearning.gan import load_unlearned_generator, sample, unlearning_reference

    config = RunDir(unlearning_run).header["config"]
    reference = unlearning_reference(config["gan"], config["classifier"], config["forget"], config["eval_samples"])
    chosen = torch.cat([torch.nonzero(reference.original_labels == config["forget"]).flatten()[:8],
                        torch.nonzero(reference.original_labels != config["forget"]).flatten()[:4]])
    latents = reference.latents[chosen]
    grid = save_grid({"after (el2)": sample(load_unlearned_generator(unlearning_run), latents)},
                     sample(load_generator(config["gan"]), latents), Path(out) / "gan_unlearning.png")
    final = RunDir(unlearning_run).summary["final"]
    with open(Path(out) / "report.md", "a") as f:
        f.write(f"\n## Generative unlearning: forgetting the {config['forget']}s of a DCGAN\n\n"
                f"Adapt-then-Unlearn (EL2, demo budget): PUL {final['pul']:.1f}% (the share of "
                f"{config['forget']}s among {config['eval_samples']} fixed latents fell from "
                f"{100 * float((reference.original_labels == config['forget']).float().mean()):.1f}% to "
                f"{100 * final['forget_share']:.1f}%), classifier-feature FD {final['fid']:.1f}. Top row: the "
                f"pre-trained GAN; bottom: the same latents after unlearning (the first 8 were "
                f"{config['forget']}s).\n\n![before and after]({grid.name})\n")


def sfd_demo(out: str, sfd_run: str) -> None:
    """Per conditioning digit: the teacher's DDIM samples, then the one-step generator's after SFD."""
    import torch

    from grp_workbench.federated.generative.diffusion import load_diffusion, sample
    from grp_workbench.federated.unlearning.diffusion_benchmarks import one_step_sampler
    from grp_workbench.federated.unlearning.sfd import load_sfd_generator
    from grp_workbench.harness.report import plot_image_grid

    config = RunDir(sfd_run).header["config"]
    labels = torch.arange(10).repeat_interleave(4)
    teacher = sample(load_diffusion(config["teacher"])[0], labels, 20, generator=torch.Generator().manual_seed(0))
    student = one_step_sampler(*load_sfd_generator(sfd_run))(labels, torch.Generator().manual_seed(0))
    rows = {f"digit {d}": [im[0].numpy() for im in torch.cat([teacher[labels == d], student[labels == d]])]
            for d in range(10)}
    grid = plot_image_grid(rows, Path(out) / "sfd.png", cmap="gray", vmin=0, vmax=1)
    final = RunDir(sfd_run).summary["final"]
    teacher_final = RunDir(config["teacher"]).summary["final"]
    with open(Path(out) / "report.md", "a") as f:
        f.write(f"\n## Diffusion unlearning: Score Forgetting Distillation forgets the {config['forget']}s\n\n"
                f"Teacher (`{config['teacher']}`, pinned by the diffusion_unlearning benchmark): the classifier's "
                f"accuracy on its conditional samples {teacher_final.get('cond_accuracy', float('nan')):.2f}. After "
                f"SFD (demo budget), the one-step "
                f"generator's samples conditioned on {config['forget']} are labelled {config['forget']} in "
                f"{final['forget_rate']:.0%} of cases and {config['override']} in {final.get('override_rate', 0):.0%}; "
                f"retained-digit accuracy {final['retained_acc']:.2f}. Each row: 4 teacher samples (DDIM, 20 "
                f"network evaluations each), then 4 of the one-step generator (1 evaluation).\n\n"
                f"![teacher and SFD samples per digit]({grid.name})\n")


def prepare_data() -> tuple[str, float]:
    """Build the dataset the demo needs, or reuse the cached build of the same inputs; returns what
    happened and the normalized score of the data's behaviour policy (the level to beat)."""
    from grp_workbench.envs.datasets import build, cached_build_path
    from grp_workbench.rl.offline.datasets import describe_hdf5

    verb = "reused the cached" if cached_build_path(OFFLINE["dataset"]).is_file() else "built"
    path = build(OFFLINE["dataset"])
    behaviour = describe_hdf5(path)["normalized_return_mean"]
    print(f"{verb} {OFFLINE['dataset']}: {path} (behaviour policy: {behaviour:.1f} normalized)")
    return verb.split()[0], behaviour


def train_demo_cell(spec, config, run_dir: str, preset: str, quiet: bool) -> tuple[dict, str]:
    """Train one demo run; a finished run of an earlier demo with the same settings is reused, one
    made with other settings is trained again. Returns the summary and what happened."""
    existing = RunDir(run_dir)
    if existing.exists():
        changed = config_changes(spec, existing, config)
        if changed:
            print(f"{run_dir} was made with other settings ({', '.join(changed)}); training it again")
            return train(spec, config, run_dir, preset, if_exists="overwrite", quiet=quiet), "trained"
        if existing.is_finished():
            print(f"reused {run_dir}: finished by an earlier demo with the same settings")
            return existing.summary, "reused"
    return train_cell(spec, config, run_dir, preset, quiet=quiet), "trained"


def timing_table(timings: list[tuple[str, float, str]]) -> str:
    rows = [f"| {label} | {seconds:.0f} | {how} |" for label, seconds, how in timings]
    total = sum(seconds for _, seconds, _ in timings)
    return "\n".join(["| step | seconds | |", "| --- | --- | --- |", *rows, f"| **total** | **{total:.0f}** | |"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per method (default: 0)")
    parser.add_argument("--preset", default="quick", help="preset under the demo budgets (default: quick)")
    parser.add_argument("--runs", default="runs/demo", help="where the run directories go")
    parser.add_argument("--out", default="reports/demo", help="where the report goes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--fresh", action="store_true", help="delete the runs and report of earlier demos first "
                        "(to measure the whole demo)")
    args = parser.parse_args()
    if args.fresh:
        for folder in (args.runs, args.out):
            shutil.rmtree(folder, ignore_errors=True)
    timings: list[tuple[str, float, str]] = []
    started = time.perf_counter()
    try:
        with step("offline dataset") as timed:
            how, behaviour = prepare_data()
        timings.append((f"dataset {OFFLINE['dataset']}", timed["seconds"], how))
        vae_run = f"{args.runs}/{LEVEL_VAE.name}/cave_escape/{args.preset}-seed0"
        made: dict[str, str] = {}  # spec name -> the run folder of its first seed (what later steps read)
        for spec, overrides in DEMO_METHODS:
            for seed in args.seeds:
                if spec is UED["dred"]:
                    overrides = {**overrides, "vae_run": vae_run}
                if spec is GAN_UNLEARNING:
                    overrides = {**overrides, "gan": made[GAN_SPEC.name], "classifier": made[CLASSIFIER.name]}
                if spec is SFD:
                    if not RunDir(PINNED_TEACHER).is_finished():
                        raise WorkbenchError(f"{PINNED_TEACHER} (the pinned diffusion teacher) is missing: it is "
                                             "committed with the benchmark; `workbench bench diffusion_unlearning "
                                             "--methods teacher` trains and pins one.")
                    overrides = {**overrides, "teacher": str(PINNED_TEACHER), "classifier": made[CLASSIFIER.name]}
                config = build_config(spec.config_cls, spec.presets, args.preset, {**overrides, "seed": seed})
                run_dir = f"{args.runs}/{spec.name}/{spec.task(config)}/{args.preset}-seed{seed}"
                made.setdefault(spec.name, run_dir)
                with step(f"train {spec.name} seed {seed}") as timed:
                    summary, how = train_demo_cell(spec, config, run_dir, args.preset, args.quiet)
                metric = summary["main_metric"]
                print(f"{spec.name} seed {seed}: {metric} {summary['final'][metric]:.4f} -> {run_dir}")
                timings.append((f"{spec.name} on {spec.task(config)}, seed {seed}", timed["seconds"], how))
        with step("report") as timed:
            path = write_report([args.runs], args.out, metrics=REPORT_METRICS, title="workbench demo")
            level_picture(args.out, vae_run)
        timings.append(("report (tables, figures, levels)", timed["seconds"], ""))
        prior_overrides = next(overrides for spec, overrides in DEMO_METHODS if spec is PRIOR)
        prior_config = build_config(PRIOR.config_cls, PRIOR.presets, args.preset, {**prior_overrides, "seed": 0})
        with step("gradient inversion: Flower simulation, IG and GIFD") as timed:
            how = gradient_inversion_demo(args.runs, args.out,
                                          f"{args.runs}/{PRIOR.name}/{PRIOR.task(prior_config)}/{args.preset}-seed0")
        timings.append(("Flower simulation + IG and GIFD attacks", timed["seconds"], how))
        with step("generative unlearning: before / after grid") as timed:
            gan_unlearning_demo(args.out, made[GAN_UNLEARNING.name])
        timings.append(("generative unlearning grid", timed["seconds"], ""))
        with step("diffusion unlearning: teacher / SFD grid") as timed:
            sfd_demo(args.out, made[SFD.name])
        timings.append(("diffusion unlearning grid", timed["seconds"], ""))
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = time.perf_counter() - started
    with open(path, "a") as f:
        f.write(f"\n## Time of each step\n\nWall-clock seconds of this `make demo` ({total:.0f} s in all, on "
                f"{os.cpu_count()} CPU cores); \"reused\" steps took what an earlier demo built. The offline RL "
                f"rows compare with the behaviour policy of {OFFLINE['dataset']}, which scores {behaviour:.1f} "
                "(normalized).\n\n" + timing_table(timings) + "\n")
    print(timing_table(timings))
    print(f"demo finished in {total:.0f} s; report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
