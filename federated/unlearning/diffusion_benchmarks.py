"""``diffusion_unlearning``: Score Forgetting Distillation against Selective Amnesia and SalUn on an MNIST DDPM.

The suite's ``prepare`` trains, once, the evaluation classifier (``train-classifier``) and the
class-conditional teacher (``train-diffusion``, all ten digits of the classifier's 8,000 training
images). Cells, per forgotten digit (0, as the official config, and 8) and seed: ``teacher`` (the
teacher itself, no unlearning: a measured cell that samples it), ``sfd`` (federated/unlearning/sfd.py),
``selective-amnesia`` and ``salun`` (federated/unlearning/diffusion_baselines.py); and one ``speed``
cell timing the samplers side by side.

Every row is scored by one function (``score_sampler``) on ``per_class`` conditional samples of each
digit from the row's own sampler (the teacher, SA and SalUn: DDIM 20 steps; SFD: its one-step EMA
generator), with fixed noise: forget_rate (share of samples conditioned on the forgotten digit that the
classifier labels as it), override_rate (of those, the share labelled the override digit: SFD's
``override``, SalUn's (forget + 1) mod 10; SA maps to noise and has none), retained_acc (accuracy on
the other digits), fid (classifier-feature Fréchet distance of the retained digits' samples to the
held-out real images of those digits: NOT Inception), ms_per_image and nfe (network evaluations per
image) of that sampling. Scores are cached in the run folder (``scores.json``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grp_workbench.federated.classifier import SPEC as CLASSIFIER
from grp_workbench.federated.generative.diffusion import NUM_CLASSES
from grp_workbench.federated.generative.diffusion import SPEC as DIFFUSION
from grp_workbench.federated.unlearning import diffusion_baselines, sfd
from grp_workbench.harness.bench import BenchOptions, Cell, Suite, cell_iqm, cell_iqm_text, prerequisite_run
from grp_workbench.harness.config import build_config
from grp_workbench.harness.runs import RunDir, atomic_write_json, read_json

FORGET_DIGITS = (0, 8)
METHODS = ("teacher", "sfd", "selective-amnesia", "salun")
PRESETS = {"cpu": "quick", "paper": "paper", "tiny": "tiny"}
SEEDS = {"cpu": (0, 1, 2), "paper": (0, 1, 2), "tiny": (0,)}
PER_CLASS = {"cpu": 200, "paper": 500, "tiny": 2}  # scored samples per digit and row
TEACHER_DDIM_STEPS = 20
SPEED_TASK = "mnist-sampling"
SCORES_FILE = "scores.json"
METRICS = ("forget_rate", "override_rate", "retained_acc", "fid", "ms_per_image", "nfe")

Sampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (labels, noise generator) -> images in [0, 1]


def _prereq(root: Path) -> dict[str, Path]:
    return {"classifier": root / "prereq" / "classifier", "teacher": root / "prereq" / "teacher"}


def ddim_sampler(model: nn.Module, steps: int = TEACHER_DDIM_STEPS) -> Sampler:
    from grp_workbench.federated.generative.diffusion import sample

    return lambda labels, generator: sample(model, labels, steps, generator=generator)


def ancestral_sampler(model: nn.Module) -> Sampler:
    from grp_workbench.federated.generative.diffusion import sample

    return lambda labels, generator: sample(model, labels, sampler="ddpm", generator=generator)


def one_step_sampler(generator_net: nn.Module, t_init: int, batch_size: int = 500) -> Sampler:
    @torch.no_grad()
    def draw(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = []
        for start in range(0, len(labels), batch_size):
            c = labels[start:start + batch_size]
            z = torch.randn(len(c), 1, 28, 28, generator=generator)
            out.append(((sfd.one_step_generate(generator_net, z, c, t_init) + 1) / 2).clamp(0, 1))
        return torch.cat(out)

    return draw


def score_sampler(draw: Sampler, nfe: int, classifier: nn.Module, forget: int, override: int | None, per_class: int,
                  seed: int) -> dict[str, float]:
    """The row's metrics from ``per_class`` samples of every digit (module docstring)."""
    from grp_workbench.federated.classifier import classifier_split
    from grp_workbench.federated.unlearning.metrics import classify, frechet_distance

    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    start = time.perf_counter()
    images = draw(labels, torch.Generator().manual_seed(seed))
    ms_per_image = 1000 * (time.perf_counter() - start) / len(labels)
    metrics = sfd.conditional_unlearning_metrics(classifier, images, labels, forget, override)
    retained = labels != forget
    _, features = classify(classifier, images[retained])
    _, (held_images, held_labels) = classifier_split()
    _, real = classify(classifier, held_images[held_labels != forget])
    return {**metrics, "fid": frechet_distance(features, real), "ms_per_image": ms_per_image, "nfe": float(nfe)}


def _cells(options: BenchOptions) -> list[Cell]:
    root = DIFFUSION_UNLEARNING.run_root(options)
    paths = _prereq(root)
    preset, per_class = PRESETS[options.budget], PER_CLASS[options.budget]
    inputs = {"teacher": str(paths["teacher"]), "classifier": str(paths["classifier"]), "device": options.device}
    cells = []
    for digit in FORGET_DIGITS:
        task = f"mnist-forget{digit}"
        for seed in options.seeds or SEEDS[options.budget]:
            params = {"teacher": inputs["teacher"], "classifier": inputs["classifier"], "forget": digit,
                      "seed": seed, "per_class": per_class, "ddim_steps": TEACHER_DDIM_STEPS}
            cells.append(Cell("teacher", task, seed, None, params, f"forget{digit}/teacher/seed{seed}",
                              measure=_measure_teacher))
            sfd_config = build_config(sfd.SPEC.config_cls, sfd.SPEC.presets, preset,
                                      {**inputs, "forget": str(digit), "seed": str(seed)})
            cells.append(Cell("sfd", task, seed, sfd.SPEC, sfd_config, f"forget{digit}/sfd/seed{seed}",
                              preset=preset))
            for method in diffusion_baselines.METHODS:
                config = build_config(diffusion_baselines.SPEC.config_cls, diffusion_baselines.SPEC.presets, preset,
                                      {**inputs, "forget": str(digit), "seed": str(seed), "method": method})
                cells.append(Cell(method, task, seed, diffusion_baselines.SPEC, config,
                                  f"forget{digit}/{method}/seed{seed}", preset=preset))
    speed = {"teacher": inputs["teacher"], "images": 10 if options.budget == "tiny" else 200,
             "ancestral_images": 2 if options.budget == "tiny" else 20, "repeats": 5}
    outputs = (("teacher-ddim20", SPEED_TASK, 0), ("teacher-ddpm1000", SPEED_TASK, 0), ("one-step", SPEED_TASK, 0))
    cells.append(Cell("speed", SPEED_TASK, 0, None, speed, "speed", measure=_measure_speed, outputs=outputs))
    return cells


def _prepare(options: BenchOptions, todo: list[Cell]) -> None:
    """The evaluation classifier and the teacher, trained once into the run root, or restored from the
    copies pinned in the results folder (every cell must unlearn from the same teacher)."""
    paths = _prereq(DIFFUSION_UNLEARNING.run_root(options))
    classifier_preset = "tiny" if options.budget == "tiny" else "quick"
    prerequisite_run(DIFFUSION_UNLEARNING, options, "classifier", CLASSIFIER,
                     build_config(CLASSIFIER.config_cls, CLASSIFIER.presets, classifier_preset,
                                  {"device": options.device}), paths["classifier"], classifier_preset, keep=("model",))
    teacher_preset = PRESETS[options.budget]
    prerequisite_run(DIFFUSION_UNLEARNING, options, "teacher", DIFFUSION,
                     build_config(DIFFUSION.config_cls, DIFFUSION.presets, teacher_preset,
                                  {"device": options.device, "classifier": str(paths["classifier"])}),
                     paths["teacher"], teacher_preset, keep=("ema",))


def _measure_teacher(cell: Cell, path: Path) -> dict[str, float]:
    from grp_workbench.federated.generative.diffusion import load_diffusion
    from grp_workbench.federated.unlearning.sfd import _classifier

    p = cell.config
    model, _ = load_diffusion(p["teacher"])
    return score_sampler(ddim_sampler(model, p["ddim_steps"]), p["ddim_steps"], _classifier(p["classifier"]),
                         p["forget"], None, p["per_class"], p["seed"])


def _measure_speed(cell: Cell, path: Path) -> dict[tuple[str, str, int], dict[str, float]]:
    """Milliseconds per image of the teacher's DDIM-20 and full ancestral chain and of a one-step
    generator (the teacher's network evaluated once, as SFD's generator: same architecture, same cost),
    interleaved in one process; the median over repeats."""
    from grp_workbench.federated.generative.diffusion import TIMESTEPS, load_diffusion

    p = cell.config
    model, _ = load_diffusion(p["teacher"])
    samplers = {"teacher-ddim20": (ddim_sampler(model, TEACHER_DDIM_STEPS), TEACHER_DDIM_STEPS, p["images"]),
                "teacher-ddpm1000": (ancestral_sampler(model), TIMESTEPS, p["ancestral_images"]),
                "one-step": (one_step_sampler(model, sfd.SFDConfig().t_init), 1, p["images"])}
    times: dict[str, list[float]] = {name: [] for name in samplers}
    for repeat in range(p["repeats"]):
        for name, (draw, _, n) in samplers.items():
            if name == "teacher-ddpm1000" and repeat >= 2:
                continue  # a minute per repeat on a CPU; two are enough for its order of magnitude
            labels = torch.arange(n) % NUM_CLASSES
            start = time.perf_counter()
            draw(labels, torch.Generator().manual_seed(repeat))
            times[name].append(1000 * (time.perf_counter() - start) / n)
    return {(name, SPEED_TASK, 0): {"ms_per_image": statistics.median(times[name]), "nfe": float(samplers[name][1])}
            for name in samplers}


def _record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[str, float]:
    """The final model's scores (cached in the run folder), plus the run's wall-clock seconds."""
    from grp_workbench.federated.unlearning.sfd import _classifier

    c = cell.config
    per_class = PER_CLASS[{preset: budget for budget, preset in PRESETS.items()}[cell.preset]]
    key = {"step": summary["step"], "per_class": per_class, "seed": cell.seed}
    cache = run.path / SCORES_FILE
    if cache.is_file() and read_json(cache).get("key") == key:
        scores = read_json(cache)["scores"]
    else:
        if cell.method == "sfd":
            generator_net, t_init = sfd.load_sfd_generator(str(run.path))
            draw, nfe, override = one_step_sampler(generator_net, t_init), 1, c.override_label
        else:
            model = diffusion_baselines.load_unlearned_diffusion(str(run.path))
            draw, nfe = ddim_sampler(model, c.sample_steps), c.sample_steps
            override = (c.forget + 1) % NUM_CLASSES if cell.method == "salun" else None
        scores = score_sampler(draw, nfe, _classifier(c.classifier), c.forget, override, per_class, cell.seed)
        atomic_write_json(cache, {"key": key, "scores": scores})
    return {**scores, "seconds": summary["throughput"]["wall_seconds"]}


def _table(records: list[dict[str, Any]]) -> str:
    columns = ("forget_rate", "override_rate", "retained_acc", "fid", "nfe", "ms_per_image")
    head = "| method | forgotten digit | " + " | ".join(columns) + " |"
    lines = [head, "|" + " --- |" * (2 + len(columns))]
    for digit in FORGET_DIGITS:
        for method in METHODS:
            task = f"mnist-forget{digit}"
            if not any(r["method"] == method and r["task"] == task for r in records):
                continue
            cells = [cell_iqm_text(records, method, task, m, 1 if m in ("fid", "ms_per_image", "nfe") else 3)
                     for m in columns]
            lines.append(f"| {method} | {digit} | " + " | ".join(cells) + " |")
    speed = [r for r in records if r["task"] == SPEED_TASK]
    text = ("Classifier-feature FD (the evaluation classifier's 128-d penultimate features, NOT Inception FID); "
            "IQM [95% CI] over seeds; rates are shares of the classifier's labels.\n\n" + "\n".join(lines))
    if speed:
        text += ("\n\nSamplers timed side by side in one process (the `speed` cell, median over repeats):\n\n"
                 "| sampler | nfe | ms per image |\n| --- | --- | --- |\n"
                 + "\n".join(f"| {r['method']} | {r['metrics']['nfe']:.0f} | {r['metrics']['ms_per_image']:.2f} |"
                             for r in speed))
    return text


def _measured_digits(records: list[dict[str, Any]], methods: tuple[str, ...], metric: str) -> list[int]:
    return [d for d in FORGET_DIGITS if all(cell_iqm(records, m, f"mnist-forget{d}", metric) is not None
                                            for m in methods)]


def _claim_forgetting(records: list[dict[str, Any]]) -> str:
    digits = _measured_digits(records, ("teacher", "sfd"), "forget_rate")
    if not digits:
        return "SFD drives the forgotten digit's rate near zero (paper): not measured yet."
    rows = [f"forget {d}: teacher {cell_iqm(records, 'teacher', f'mnist-forget{d}', 'forget_rate'):.3f} -> sfd "
            f"{cell_iqm(records, 'sfd', f'mnist-forget{d}', 'forget_rate'):.3f}" for d in digits]
    near_zero = sum(cell_iqm(records, "sfd", f"mnist-forget{d}", "forget_rate") < 0.05 for d in digits)
    verdict = ("agrees" if near_zero == len(digits) else "does not agree" if near_zero == 0
               else f"agrees on {near_zero} of {len(digits)} digits")
    return (f"SFD drives the forgotten digit's rate near zero (paper; here: below 0.05): the measured direction "
            f"{verdict} (IQM forget_rate; {'; '.join(rows)}).")


def _claim_retention(records: list[dict[str, Any]]) -> str:
    digits = _measured_digits(records, ("teacher", "sfd"), "retained_acc")
    if not digits:
        return "SFD keeps retained accuracy and FD close to the teacher's (paper): not measured yet."
    rows, kept = [], 0
    for d in digits:
        task = f"mnist-forget{d}"
        acc = {m: cell_iqm(records, m, task, "retained_acc") for m in ("teacher", "sfd")}
        fd = {m: cell_iqm(records, m, task, "fid") for m in ("teacher", "sfd")}
        kept += (acc["teacher"] - acc["sfd"] <= 0.05) + (fd["sfd"] <= 1.5 * fd["teacher"])
        rows.append(f"forget {d}: retained_acc {acc['teacher']:.3f} -> {acc['sfd']:.3f}, FD {fd['teacher']:.1f} -> "
                    f"{fd['sfd']:.1f}")
    total = 2 * len(digits)
    verdict = "agrees" if kept == total else "does not agree" if kept == 0 else f"agrees in {kept} of {total} checks"
    return (f"SFD keeps retained accuracy and FD close to the teacher's (paper; here: accuracy within 0.05, FD within "
            f"1.5x): the measured direction {verdict} (IQM; {'; '.join(rows)}).")


def _claim_speed(records: list[dict[str, Any]]) -> str:
    speed = {r["method"]: r["metrics"]["ms_per_image"] for r in records if r["task"] == SPEED_TASK}
    if {"teacher-ddim20", "one-step"} - speed.keys():
        return "The one-step sampler is >= 20x faster than 20-step DDIM (paper): not measured yet."
    ratio = speed["teacher-ddim20"] / speed["one-step"]
    return (f"The one-step sampler is >= 20x faster than 20-step DDIM: the measured ratio is {ratio:.1f}x "
            f"({speed['teacher-ddim20']:.2f} vs {speed['one-step']:.2f} ms per image, side by side), "
            f"{'agrees' if ratio >= 20 else 'does not agree'}.")


def _claim_peers(records: list[dict[str, Any]]) -> str:
    digits = _measured_digits(records, ("sfd", "selective-amnesia", "salun"), "forget_rate")
    if not digits:
        return "SFD forgets at least as well as SA and SalUn at a similar FD (paper): not measured yet."
    rows = []
    for d in digits:
        task = f"mnist-forget{d}"
        rows.append(f"forget {d}: " + ", ".join(
            f"{m} {cell_iqm(records, m, task, 'forget_rate'):.3f} / {cell_iqm(records, m, task, 'fid'):.1f}"
            for m in ("sfd", "selective-amnesia", "salun")))
    return ("SFD forgets at least as well as SA and SalUn at a similar FD (paper): IQM forget_rate / FD, "
            f"{'; '.join(rows)}.")


def _notes(options: BenchOptions) -> str:
    preset = PRESETS[options.budget]
    teacher = build_config(DIFFUSION.config_cls, DIFFUSION.presets, preset, {})
    distil = build_config(sfd.SPEC.config_cls, sfd.SPEC.presets, preset, {})
    peer = build_config(diffusion_baselines.SPEC.config_cls, diffusion_baselines.SPEC.presets, preset, {})
    return (f"MNIST (the classifier's 8,000 training images; its 2,000 held-out images are the real side of FD). "
            f"Teacher: diffusers UNet2DModel {teacher.channels}, {teacher.total_steps} steps of batch "
            f"{teacher.batch_size}, EMA {teacher.ema_decay}; sampled with DDIM {TEACHER_DDIM_STEPS} steps. "
            f"Preset '{preset}': SFD {distil.total_steps} iterations of batch {distil.batch_size}, lr "
            f"{distil.generator_lr:g}, "
            f"coefficients {distil.sg_remain_coef:g}/{distil.sg_forget_coef:g}/{distil.g_remain_coef:g}/"
            f"{distil.g_forget_coef:g}, override {distil.override}, generator EMA {distil.ema_decay}; SA and SalUn "
            f"{peer.total_steps} steps of batch {peer.batch_size}, lr {peer.lr:g}, EMA {peer.ema_decay}, SA lambda "
            f"{peer.sa_lambda:g} (Fisher on {peer.fim_per_class} samples per digit x {peer.fim_timesteps} "
            f"timesteps, replay {peer.replay_per_class} per digit), SalUn alpha {peer.salun_alpha:g} and a "
            f"{peer.mask_fraction:.0%} saliency mask. Scores on {PER_CLASS[options.budget]} samples per digit per "
            "row, fixed noise per seed. No retrained-without-the-digit teacher was run. seconds: wall-clock of the "
            "unlearning run (the teacher row: of its scoring).")


def _extra(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    """The teacher's conditional quality on 500 samples per digit, and a sample grid per method."""
    root = DIFFUSION_UNLEARNING.run_root(options)
    paths = _prereq(root)
    if not RunDir(paths["teacher"]).is_finished() or not RunDir(paths["classifier"]).is_finished():
        return ""
    from grp_workbench.federated.generative.diffusion import conditional_quality, load_diffusion
    from grp_workbench.federated.unlearning.sfd import _classifier
    from grp_workbench.harness.report import plot_image_grid

    teacher, _ = load_diffusion(paths["teacher"])
    quality_file = root / "prereq" / "teacher_quality.json"
    per_class = 2 if options.budget == "tiny" else 500
    if not quality_file.is_file() or read_json(quality_file).get("per_class") != per_class:
        quality = conditional_quality(teacher, _classifier(str(paths["classifier"])), per_class, TEACHER_DDIM_STEPS)
        atomic_write_json(quality_file, {"per_class": per_class, **quality})
    quality = read_json(quality_file)
    text = [f"Teacher (`{paths['teacher']}`): the classifier's accuracy on {per_class} DDIM-{TEACHER_DDIM_STEPS} "
            f"samples per digit {quality['cond_accuracy']:.3f} (target >= 0.90); FD to the 2,000 held-out images "
            f"{quality['fid']:.2f}.", ""]
    out = DIFFUSION_UNLEARNING.out_dir(options)
    seed = min(c.seed for c in cells)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(6)
    for digit in FORGET_DIGITS:
        for method in METHODS:
            run = root / f"forget{digit}" / method / f"seed{seed}"
            if method == "teacher":
                draw = ddim_sampler(teacher)
            elif not RunDir(run).is_finished():
                continue
            elif method == "sfd":
                draw = one_step_sampler(*sfd.load_sfd_generator(str(run)))
            else:
                draw = ddim_sampler(diffusion_baselines.load_unlearned_diffusion(str(run)))
            images = draw(labels, torch.Generator().manual_seed(seed))
            rows = {f"digit {d}": [im[0].numpy() for im in images[labels == d]] for d in range(NUM_CLASSES)}
            figure = plot_image_grid(rows, out / f"samples_forget{digit}_{method}.png", cmap="gray", vmin=0, vmax=1)
            text.append(f"![forget {digit}, {method}, seed {seed}: one row per conditioning digit]({figure.name})")
        text.append("")
    return "\n".join(text)


DIFFUSION_UNLEARNING = Suite(
    name="diffusion_unlearning",
    title="Score Forgetting Distillation against Selective Amnesia and SalUn on a class-conditional MNIST DDPM",
    grid=_cells, record=_record, headline="forget_rate", notes=_notes, tables=_table, prepare=_prepare,
    claims=(_claim_forgetting, _claim_retention, _claim_speed, _claim_peers), extra_markdown=_extra,
    budgets=("cpu", "paper", "tiny"),
)
