"""``gan_unlearning``: Adapt-then-Unlearn (EL2 / NL2 / IL2) against its baselines on the MNIST DCGAN.

The suite's ``prepare`` trains, once, the evaluation classifier (``train-classifier``) and the
pre-trained GAN (``train-gan``, all ten digits of the classifier's 8,000 training images). Cells, per
forgotten digit (1, 4, 8: the paper's MNIST classes) and seed: ``retrain`` (a GAN trained from scratch
without the digit, same budget as the pre-trained one: the gold reference and the Ret-FD target),
``finetune``, ``ewc``, ``extrapolation``, ``nl2``, ``il2``, ``el2`` (federated/unlearning/gan.py).

Records are computed from each cell's final generator by one scorer (``UnlearningReference.score``),
the same for every row: PUL on 5,000 fixed latents against the pre-trained GAN, the classifier-feature
Fréchet distance to the 2,000 held-out real images minus the forgotten digit, Ret-FD to the retrained
GAN of the same seed, retained-class balance. A cell's scores are cached in its run folder
(``scores.json``), keyed by the retrained run they used.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from grp_workbench.federated.classifier import SPEC as CLASSIFIER
from grp_workbench.federated.generative.dcgan import GAN_SPEC
from grp_workbench.federated.unlearning.gan import METHODS, PRETRAINED_STATE, SPEC, unlearning_reference
from grp_workbench.harness.bench import BenchOptions, Cell, Suite, cell_iqm, cell_iqm_text, prerequisite_run
from grp_workbench.harness.config import build_config
from grp_workbench.harness.runs import RunDir, atomic_write_json, read_json

FORGET_DIGITS = (1, 4, 8)
ROWS = ("retrain", *METHODS)
PRESETS = {"cpu": "quick", "paper": "paper", "tiny": "tiny"}
GAN_PRESET = {"cpu": "paper", "paper": "paper", "tiny": "tiny"}  # the pre-trained and the retrained GAN
SEEDS = {"cpu": (0, 1, 2), "paper": (0, 1, 2), "tiny": (0,)}
SCORES_FILE = "scores.json"

# Paper Table 1 (MNIST, StyleGAN2 32x32, Inception FID; mean over runs), from ../shared/references/unlearning.md.
PAPER_TABLE = {  # method: {digit: (PUL, FID, Ret-FID)}
    "retrain": {1: (98.80, 4.94, None), 4: (98.58, 5.24, None), 8: (99.72, 4.80, None)},
    "ewc": {1: (90.93, 7.18, 5.10), 4: (82.78, 9.34, 5.91), 8: (92.70, 9.35, 6.03)},
    "extrapolation": {1: (95.10, 41.39, 42.98), 4: (94.50, 17.90, 27.81), 8: (90.90, 45.79, 44.30)},
    "nl2": {1: (97.85, 9.69, 6.70), 4: (93.03, 10.50, 6.26), 8: (97.92, 9.95, 6.70)},
    "il2": {1: (92.97, 13.06, 16.55), 4: (90.39, 15.54, 8.64), 8: (98.28, 9.72, 11.64)},
    "el2": {1: (99.32, 9.65, 6.29), 4: (96.23, 10.24, 5.80), 8: (95.22, 8.89, 5.68)},
}


def _prereq(root: Path) -> dict[str, Path]:
    return {"classifier": root / "prereq" / "classifier", "gan": root / "prereq" / "gan"}


def _cells(options: BenchOptions) -> list[Cell]:
    root = GAN_UNLEARNING.run_root(options)
    paths = _prereq(root)
    preset, gan_preset = PRESETS[options.budget], GAN_PRESET[options.budget]
    cells = []
    # per digit, its retrain cells first (the other rows' Ret-FD needs them), so that a partial run has
    # whole digits: the workers take cells in order
    for digit in FORGET_DIGITS:
        for seed in options.seeds or SEEDS[options.budget]:
            config = build_config(GAN_SPEC.config_cls, GAN_SPEC.presets, gan_preset,
                                  {"exclude": str(digit), "seed": str(seed), "device": options.device})
            cells.append(Cell("retrain", f"mnist-forget{digit}", seed, GAN_SPEC, config,
                              f"forget{digit}/retrain/seed{seed}", preset=gan_preset))
        for seed in options.seeds or SEEDS[options.budget]:
            for method in METHODS:
                config = build_config(SPEC.config_cls, SPEC.presets, preset, {
                    "gan": str(paths["gan"]), "classifier": str(paths["classifier"]), "forget": str(digit),
                    "method": method, "seed": str(seed), "device": options.device})
                cells.append(Cell(method, f"mnist-forget{digit}", seed, SPEC, config,
                                  f"forget{digit}/{method}/seed{seed}", preset=preset))
    return cells


def _prepare(options: BenchOptions, todo: list[Cell]) -> None:
    """The evaluation classifier and the pre-trained GAN, trained once into the run root, or restored
    from the copies pinned in the results folder (every cell must unlearn from the same GAN)."""
    paths = _prereq(GAN_UNLEARNING.run_root(options))
    classifier_preset = "tiny" if options.budget == "tiny" else "quick"
    prerequisite_run(GAN_UNLEARNING, options, "classifier", CLASSIFIER,
                     build_config(CLASSIFIER.config_cls, CLASSIFIER.presets, classifier_preset,
                                  {"device": options.device}), paths["classifier"], classifier_preset, keep=("model",))
    gan_preset = GAN_PRESET[options.budget]
    prerequisite_run(GAN_UNLEARNING, options, "gan", GAN_SPEC,
                     build_config(GAN_SPEC.config_cls, GAN_SPEC.presets, gan_preset, {"device": options.device}),
                     paths["gan"], gan_preset, keep=PRETRAINED_STATE)


@functools.lru_cache(maxsize=64)
def _retrained_features(run_dir: str, gan: str, classifier: str, forget: int, eval_samples: int) -> torch.Tensor:
    from grp_workbench.federated.generative.dcgan import load_generator

    reference = unlearning_reference(gan, classifier, forget, eval_samples)
    return reference.features(load_generator(run_dir))


def _record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[str, float]:
    """The final generator's scores (cached in the run folder), plus the run's wall-clock seconds."""
    from grp_workbench.federated.generative.dcgan import load_generator
    from grp_workbench.federated.unlearning.gan import EVAL_LATENT_SEED, load_unlearned_generator

    root = run.path.parents[2]  # <root>/forget<d>/<method>/seed<s>
    paths = _prereq(root)
    digit = int(cell.task.removeprefix("mnist-forget"))
    samples = SPEC.config_cls().eval_samples if cell.method == "retrain" else cell.config.eval_samples
    retrain = RunDir(root / f"forget{digit}" / "retrain" / f"seed{cell.seed}")
    key = {"retrained": str(retrain.path), "retrained_step": retrain.summary.get("step")
           if cell.method != "retrain" and retrain.is_finished() else None,
           "step": summary["step"], "samples": samples, "latent_seed": EVAL_LATENT_SEED}
    cache = run.path / SCORES_FILE
    if cache.is_file() and read_json(cache).get("key") == key:
        scores = read_json(cache)["scores"]
    else:
        reference = unlearning_reference(str(paths["gan"]), str(paths["classifier"]), digit, samples)
        generator = (load_generator(run.path) if cell.method == "retrain" else load_unlearned_generator(str(run.path)))
        retrained = (_retrained_features(str(retrain.path), str(paths["gan"]), str(paths["classifier"]), digit,
                                         samples) if key["retrained_step"] is not None else None)
        scores = reference.score(generator, retrained)
        atomic_write_json(cache, {"key": key, "scores": scores})
    return {**scores, "seconds": summary["throughput"]["wall_seconds"]}


def _table(records: list[dict[str, Any]]) -> str:
    """Methods x forgotten digit, PUL / FD / Ret-FD (IQM [95% CI]), then the paper's Table 1."""
    head = "| method | " + " | ".join(f"{d}: PUL % | {d}: FD | {d}: Ret-FD" for d in FORGET_DIGITS) + " |"
    lines = [head, "|" + " --- |" * (1 + 3 * len(FORGET_DIGITS))]
    for method in ROWS:
        if not any(r["method"] == method for r in records):
            continue
        cells = []
        for digit in FORGET_DIGITS:
            task = f"mnist-forget{digit}"
            cells += [cell_iqm_text(records, method, task, "pul", 1), cell_iqm_text(records, method, task, "fid", 1),
                      cell_iqm_text(records, method, task, "ret_fid", 1) if method != "retrain" else "n/a"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    ours = "\n".join(lines)
    paper = [head, "|" + " --- |" * (1 + 3 * len(FORGET_DIGITS))]
    for method, row in PAPER_TABLE.items():
        values = []
        for digit in FORGET_DIGITS:
            p, f, r = row[digit]
            values += [f"{p:.2f}", f"{f:.2f}", "n/a" if r is None else f"{r:.2f}"]
        paper.append(f"| {method} | " + " | ".join(values) + " |")
    return (f"Measured here (DCGAN 28x28; FD = Fréchet distance on the evaluation classifier's 128-d penultimate "
            f"features, NOT Inception FID; IQM [95% CI] over seeds):\n\n{ours}\n\nThe paper's Table 1 (StyleGAN2 "
            "32x32, Inception FID; the reference notes' transcription; CF-k, EU-k, l1-sparse, CDC, RSSA rows not run "
            "here):\n\n" + "\n".join(paper))


def _measured_digits(records: list[dict[str, Any]], methods: tuple[str, ...], metric: str) -> list[int]:
    """The forgotten digits where every one of ``methods`` has a record of ``metric`` (a partial run
    states its claims on those, and says which)."""
    return [d for d in FORGET_DIGITS if all(cell_iqm(records, m, f"mnist-forget{d}", metric) is not None
                                            for m in methods)]


def _verdict(wins: int, total: int) -> str:
    return "agrees" if wins == total else "does not agree" if wins == 0 else f"agrees in {wins} of {total} cells"


def _claim_pul(records: list[dict[str, Any]]) -> str:
    digits = _measured_digits(records, ("el2", "nl2"), "pul")
    if not digits:
        return "EL2 and NL2 reach PUL > 90% (paper): not measured yet."
    values = {(m, d): cell_iqm(records, m, f"mnist-forget{d}", "pul") for m in ("el2", "nl2") for d in digits}
    wins = sum(v > 90 for v in values.values())
    shown = "; ".join(f"{m} forget {d}: {v:.1f}" for (m, d), v in values.items())
    retrain = [cell_iqm(records, "retrain", f"mnist-forget{d}", "pul") for d in digits]
    ceiling = ("; retraining without the digit, the gold reference: "
               + ", ".join(f"{v:.1f}" for v in retrain if v is not None)) if any(v is not None for v in retrain) else ""
    return (f"EL2 and NL2 reach PUL > 90% (paper): the measured direction {_verdict(wins, len(values))} (IQM PUL %, "
            f"digits {', '.join(map(str, digits))}: {shown}{ceiling}).")


def _claim_fid(records: list[dict[str, Any]]) -> str:
    digits = _measured_digits(records, ("el2", "nl2", "extrapolation", "finetune"), "fid")
    if not digits:
        return "EL2 / NL2 keep a lower FD than extrapolation and fine-tuning (paper): not measured yet."
    rows, wins, total = [], 0, 0
    for digit in digits:
        fd = {m: cell_iqm(records, m, f"mnist-forget{digit}", "fid") for m in ("el2", "nl2", "extrapolation",
                                                                             "finetune")}
        for method in ("el2", "nl2"):
            for baseline in ("extrapolation", "finetune"):
                total += 1
                wins += fd[method] < fd[baseline]
        rows.append(f"forget {digit}: " + ", ".join(f"{m} {v:.1f}" for m, v in fd.items()))
    return (f"EL2 / NL2 keep a lower FD than extrapolation and fine-tuning (paper: 9-10 vs 18-46 for extrapolation): "
            f"the measured direction {_verdict(wins, total)} (IQM FD; {'; '.join(rows)}).")


def _claim_repulsion(records: list[dict[str, Any]]) -> str:
    """What the repulsion adds over the same training on positives without it (gamma = 0)."""
    digits = _measured_digits(records, ("el2", "nl2", "finetune"), "pul")
    if not digits:
        return "Repulsion unlearns more than fine-tuning on positives alone (paper's premise): not measured yet."
    rows, wins = [], 0
    for digit in digits:
        pul = {m: cell_iqm(records, m, f"mnist-forget{digit}", "pul") for m in ("el2", "nl2", "finetune")}
        wins += (pul["el2"] > pul["finetune"]) + (pul["nl2"] > pul["finetune"])
        rows.append(f"forget {digit}: " + ", ".join(f"{m} {v:.1f}" for m, v in pul.items()))
    return (f"Repulsion unlearns more than fine-tuning on positives alone (the paper's premise): the measured "
            f"direction {_verdict(wins, 2 * len(digits))} (IQM PUL %; {'; '.join(rows)}).")


def _notes(options: BenchOptions) -> str:
    config = build_config(SPEC.config_cls, SPEC.presets, PRESETS[options.budget], {})
    gan = build_config(GAN_SPEC.config_cls, GAN_SPEC.presets, GAN_PRESET[options.budget], {})
    return (f"MNIST (the classifier's 8,000 training images; its 2,000 held-out images are the real side of FD). "
            f"Pre-trained and retrained GAN: the DCGAN of federated/generative/dcgan.py, {gan.total_steps} steps of "
            f"batch {gan.batch_size}. Unlearning preset '{PRESETS[options.budget]}': K = {config.adapted_models} "
            f"adapted models x {config.adapt_steps} steps, {config.unlearn_steps} unlearning steps, batch "
            f"{config.batch_size}, gamma {config.gamma}, EWC weight {config.ewc_weight:g} (mean-1 Fisher), "
            f"extrapolation t {config.extrapolation_t}. Metrics on {config.eval_samples} fixed latents per model: PUL "
            "(drop of the forgotten digit's count vs the pre-trained GAN, %), FD (classifier-feature Fréchet "
            "distance to the held-out real images without the digit), Ret-FD (to the retrained GAN of the same "
            "seed), retained_balance (normalised entropy of the labels over the nine other digits), seconds "
            "(wall-clock of the run; retrain: of the whole GAN training).")


def _extra(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    """The pre-trained GAN's label distribution and FD, and a sample grid per forgotten digit."""
    root = GAN_UNLEARNING.run_root(options)
    paths = _prereq(root)
    if not RunDir(paths["gan"]).is_finished() or not RunDir(paths["classifier"]).is_finished():
        return ""
    from grp_workbench.federated.generative.dcgan import load_generator
    from grp_workbench.federated.unlearning.gan import load_unlearned_generator, sample
    from grp_workbench.federated.unlearning.metrics import classify, frechet_distance, label_shares
    from grp_workbench.harness.report import plot_image_grid

    reference = unlearning_reference(str(paths["gan"]), str(paths["classifier"]), FORGET_DIGITS[0], 10_000)
    original = load_generator(paths["gan"])
    labels, features = classify(reference.classifier, sample(original, reference.latents))
    from grp_workbench.federated.classifier import classifier_split

    (train_x, _), (held_x, _) = classifier_split()
    held_features = classify(reference.classifier, held_x)[1]
    shares = label_shares(labels)
    fd_all = frechet_distance(features, held_features)
    fd_floor = frechet_distance(classify(reference.classifier, train_x[:len(held_x)])[1], held_features)
    text = [f"Pre-trained GAN (`{paths['gan']}`), 10,000 samples: the classifier's label shares "
            + ", ".join(f"{d}: {100 * s:.1f}%" for d, s in enumerate(shares))
            + f"; FD to all 2,000 held-out images {fd_all:.2f} (2,000 real training images vs the same: "
              f"{fd_floor:.2f}, "
              "the floor at this sample size).", ""]
    out = GAN_UNLEARNING.out_dir(options)
    for digit in FORGET_DIGITS:
        seed = min(c.seed for c in cells)
        reference = unlearning_reference(str(paths["gan"]), str(paths["classifier"]), digit,
                                         SPEC.config_cls().eval_samples)
        forgotten = torch.nonzero(reference.original_labels == digit).flatten()[:8]
        others = torch.nonzero(reference.original_labels != digit).flatten()[:4]
        latents = reference.latents[torch.cat([forgotten, others])]
        rows = {"pre-trained": sample(original, latents)}
        for method in ROWS:
            run = root / f"forget{digit}" / method / f"seed{seed}"
            if RunDir(run).is_finished():
                generator = load_generator(run) if method == "retrain" else load_unlearned_generator(str(run))
                rows[method] = sample(generator, latents)
        if len(rows) == 1:
            continue
        figure = plot_image_grid({k: [im[0].numpy() for im in v] for k, v in rows.items()},
                                 out / f"samples_forget{digit}.png", cmap="gray", vmin=0, vmax=1)
        text.append(f"![forget {digit}: the same latents before (top) and after each method, seed {seed}; the first "
                    f"8 are latents the pre-trained GAN draws as a {digit}, the last 4 others]({figure.name})\n")
    return "\n".join(text)


GAN_UNLEARNING = Suite(
    name="gan_unlearning",
    title="Adapt-then-Unlearn (EL2 / NL2 / IL2) against retraining, fine-tuning, EWC and extrapolation on an MNIST "
          "DCGAN",
    grid=_cells, record=_record, headline="pul", notes=_notes, tables=_table, prepare=_prepare,
    claims=(_claim_pul, _claim_fid, _claim_repulsion), extra_markdown=_extra, budgets=("cpu", "paper", "tiny"),
)
