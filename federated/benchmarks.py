"""Benchmark suites of the federated domain, declared for the shared runner (``harness/bench.py``).

``mnist_classifier``: the small CNN on MNIST (stratified 8,000 / 2,000 split of the 10k test images),
the federated task model and the evaluation classifier of generated images. Acceptance target of
the foundation issue: >= 98% held-out accuracy in a few CPU minutes. ``workbench bench
mnist_classifier`` (budget ``cpu``: the quick preset, seeds 0 1 2; ``paper``: the paper preset).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from grp_workbench.federated.classifier import SPEC as CLASSIFIER
from grp_workbench.harness.bench import BenchOptions, Cell, Suite, cell_iqm, paper_table
from grp_workbench.harness.config import build_config
from grp_workbench.harness.evaluation import summarize
from grp_workbench.harness.runs import RunDir

CLASSIFIER_PRESET = {"cpu": "quick", "paper": "paper"}


def _classifier_cells(options: BenchOptions) -> list[Cell]:
    preset = CLASSIFIER_PRESET[options.budget]
    cells = []
    for seed in options.seeds or (0, 1, 2):
        config = build_config(CLASSIFIER.config_cls, CLASSIFIER.presets, preset,
                              {"seed": str(seed), "device": options.device})
        cells.append(Cell("small_cnn", f"{CLASSIFIER.task(config)}-holdout2k", seed, CLASSIFIER, config,
                          f"{preset}/seed{seed}", preset=preset))
    return cells


def _classifier_record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[str, float]:
    return {"accuracy_last": summary["final"]["accuracy"], "accuracy_best": summary["best"]["accuracy"],
            "steps_per_s": summary["throughput"]["steps_per_s"],
            "wall_seconds": summary["throughput"]["wall_seconds"]}


def _classifier_notes(options: BenchOptions) -> str:
    config = _classifier_cells(options)[0].config
    preset = CLASSIFIER_PRESET[options.budget]
    return (f"Preset `{preset}` ({config.total_steps} steps of batch {config.batch_size}, Adam lr {config.lr} "
            f"cosine, random shifts of up to {config.max_shift} px); accuracy on the fixed stratified 2,000-image "
            "held-out split. Time is wall-clock seconds of the whole run including evaluation.")


def _classifier_curves(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    from grp_workbench.harness.report import collect_runs, plot_learning_curves

    root = MNIST_CLASSIFIER.run_root(options) / CLASSIFIER_PRESET[options.budget]
    runs, _ = collect_runs([root]) if root.is_dir() else ([], [])
    figure = plot_learning_curves(runs, "accuracy", Path(MNIST_CLASSIFIER.out_dir(options)) / "curves.png")
    return f"![held-out accuracy over training, mean and 95% band over seeds]({figure.name})\n" if figure else ""


def _classifier_claim(records: list[dict[str, Any]]) -> str:
    """The target the federated task model was built to (not a paper's claim)."""
    values = [r["metrics"]["accuracy_last"] for r in records]
    if not values:
        return "Target >= 98% held-out accuracy: not measured yet."
    stats = summarize(values)
    low, high = stats["iqm_ci95"]
    return (f"Target >= 98% held-out accuracy (the workbench's, not a paper's): IQM {stats['iqm']:.4f} "
            f"[{low:.4f}, {high:.4f}] over {len(values)} seeds, {'met' if low >= 0.98 else 'not met'} by the CI.")


MNIST_CLASSIFIER = Suite(
    name="mnist_classifier",
    title="The federated task model: a small CNN on MNIST (held-out accuracy)",
    grid=_classifier_cells, record=_classifier_record, headline="accuracy_last", notes=_classifier_notes,
    extra_markdown=_classifier_curves, record_device=True, claims=(_classifier_claim,),
)


# ---- gradient_inversion: IG, GGL and GIFD (and DLG, iDLG) against captured Flower updates ------------
# A cell is one attack on one captured client update (the record's seed is the target batch index).
# The cpu grid is one factor at a time around batch size 1, untrained model, no defense, in-distribution
# prior (the full cross is about 10 CPU hours; it is the paper budget):
#   (a) bs 1, untrained: no defense, noise, clip, prune x DLG, iDLG, IG, GGL, GIFD; the OOD prior under
#       no defense and noise;
#   (b) bs 4 and 8, untrained, undefended: IG, GGL, GIFD;
#   (c) the partly trained model (20 FedSGD rounds), bs 1, undefended: IG, GGL, GIFD with both priors
#       (48 clients, so that at least 16 hold a 5-9 for the OOD prior: 24 do).
GI_DESIGNS = {
    "cpu": [  # (states, batch sizes, defenses, attacks, defenses with an OOD cell, clients)
        (("untrained",), (1,), ("none", "noise", "clip", "prune"), ("dlg", "idlg", "ig", "ggl", "gifd"),
         ("none", "noise"), 40),
        (("untrained",), (4, 8), ("none",), ("ig", "ggl", "gifd"), (), 40),
        (("trained",), (1,), ("none",), ("ig", "ggl", "gifd"), ("none",), 48),
    ],
    "paper": [(("untrained", "trained"), (1, 4, 8), ("none", "noise", "clip", "prune"),
               ("dlg", "idlg", "ig", "ggl", "gifd"), ("none", "noise", "clip", "prune"), 48)],
    "tiny": [(("untrained",), (1,), ("none", "noise"), ("ig", "gifd"), (), 4)],  # seconds: a smoke test
}
GI_PRESET = {"cpu": "quick", "paper": "paper", "tiny": "tiny"}
GI_BATCHES = {"cpu": 16, "paper": 16, "tiny": 2}  # target batches per (attack, setting)
# results names (issue 19): <model>-bs<B>-<untrained|trained>-<indist|ood>-<defense>; the victim is
# the small CNN (a ResNet row is still to come)
GI_MODEL = "smallcnn"
GI_CLIP_NORM = 4.0  # GIFD's bound; every bs-1 update of the untrained model is below it (2.4-3.2)


def _gi_cells(options: BenchOptions) -> list[Cell]:
    from grp_workbench.federated.attack import attack_config

    cells = []
    for states, batch_sizes, defenses, attacks, ood_defenses, clients in GI_DESIGNS[options.budget]:
        for state in states:
            for batch_size in batch_sizes:
                for defense in defenses:
                    for attack in attacks:
                        for prior in (("in", "ood") if attack in ("ggl", "gifd") else (None,)):
                            if prior == "ood" and (batch_size != 1 or defense not in ood_defenses):
                                continue
                            task = (f"{GI_MODEL}-bs{batch_size}-{state}-{'ood' if prior == 'ood' else 'indist'}-"
                                    f"{defense}")
                            for index in options.seeds or range(GI_BATCHES[options.budget]):
                                # the resolved settings, so a changed default (DLG's inner L-BFGS
                                # iterations, issue 19) makes the cell due again instead of "done"
                                settings = dataclasses.asdict(attack_config(attack, GI_PRESET[options.budget]))
                                params = {"state": state, "batch_size": batch_size, "defense": defense,
                                          "clients": clients, "clip_norm": GI_CLIP_NORM, "attack": attack,
                                          "prior": prior, "preset": GI_PRESET[options.budget], "index": index,
                                          "attack_config": settings}
                                cells.append(Cell(attack, task, index, None, params,
                                                  f"{task}/{attack}/batch{index:02d}", measure=_measure_inversion))
    return cells


def _capture_folder(root: Path, params: dict[str, Any]) -> Path:
    defense = params["defense"] + (f"{params['clip_norm']:g}" if params["defense"] == "clip" else "")
    clients = f"-{params['clients']}clients" if params["clients"] != 40 else ""
    return root / "captures" / f"{params['state']}-bs{params['batch_size']}-{defense}{clients}"


def _gi_prerequisites(root: Path, preset: str) -> dict[str, tuple[Any, Any, Path]]:
    from grp_workbench.federated.generative.dcgan import SPEC as PRIOR

    prerequisites = {"classifier": (CLASSIFIER, build_config(CLASSIFIER.config_cls, CLASSIFIER.presets, preset, {}),
                                    root / "priors" / "classifier")}
    for prior in ("in", "ood"):
        prerequisites[f"prior-{prior}"] = (PRIOR, build_config(PRIOR.config_cls, PRIOR.presets, preset,
                                                               {"prior": prior}), root / "priors" / prior)
    return prerequisites


def _prepare_inversion(options: BenchOptions, todo: list[Cell]) -> None:
    """The attacker's priors and evaluation classifier (harness runs, trained once), and the captured
    updates of each Flower simulation the cells attack (simulated once; a finished capture set is
    never simulated again, so a cell's target stays the same update)."""
    from grp_workbench.federated.app import FLSettings
    from grp_workbench.federated.simulate import simulate
    from grp_workbench.harness.trainer import train_cell

    root = GRADIENT_INVERSION.run_root(options)
    for spec, config, path in _gi_prerequisites(root, GI_PRESET[options.budget]).values():
        train_cell(spec, config, str(path), GI_PRESET[options.budget], quiet=False)
    for params in {json.dumps(c.config, sort_keys=True): c.config for c in todo}.values():
        folder = _capture_folder(root, params)
        if (folder / "summary.json").is_file():
            continue
        rounds = 1 if params["state"] == "untrained" else 20
        simulate(FLSettings(num_server_rounds=rounds, fraction_train=1.0, mode="fedsgd",
                            batch_size=params["batch_size"], defense=params["defense"], capture_rounds=str(rounds),
                            capture_clients="all", clip_norm=params["clip_norm"], output_dir=str(folder)),
                 params["clients"], cpus_per_client=1.0)


@functools.lru_cache(maxsize=4)
def _attacker(root: str, preset: str) -> dict[str, Any]:
    """The priors and classifier, loaded once per process (a worker or Ray task runs many cells)."""
    from grp_workbench.federated.attack import load_classifier
    from grp_workbench.federated.generative.dcgan import load_generator

    paths = {name: path for name, (_, _, path) in _gi_prerequisites(Path(root), preset).items()}
    return {"classifier": load_classifier(paths["classifier"]), "in": load_generator(paths["prior-in"]),
            "ood": load_generator(paths["prior-ood"])}


def _measure_inversion(cell: Cell, folder: Path) -> dict[str, float]:
    """One attack on one captured update; the reconstruction is kept beside the record."""
    import torch

    from grp_workbench.federated import FederatedError
    from grp_workbench.federated.app import read_capture
    from grp_workbench.federated.attack import capture_ground_truth, client_truth, run_attack
    from grp_workbench.federated.generative.dcgan import OOD_CLASSES

    params = cell.config
    root = folder.parents[len(Path(cell.run).parts) - 1]
    # in the order of the clients' partitions (the evaluator's bookkeeping; node ids are random per simulation)
    captures = sorted((_capture_folder(root, params) / "captures").glob("round*-node*.pt"),
                      key=lambda c: client_truth(read_capture(c))["partition_id"])
    if params["prior"] == "ood":  # the OOD case: a prior of digits 0-4 against clients holding 5-9
        captures = [c for c in captures
                    if not set(capture_ground_truth(read_capture(c))[1].tolist()) & set(OOD_CLASSES)]
    if params["index"] >= len(captures):
        raise FederatedError(f"{cell.task}: {len(captures)} captured updates to attack, not {params['index'] + 1}; "
                             "simulate more clients.")
    attacker = _attacker(str(root), params["preset"])
    torch.set_num_threads(1)
    result = run_attack(params["attack"], captures[params["index"]], attacker[params["prior"]] if params["prior"]
                        else None, params["preset"], seed=params["index"], classifier=attacker["classifier"])
    torch.save({"images": result["images"].half(), "labels": result["labels"],
                "originals": result["originals"].half()}, folder / "reconstruction.pt")
    metrics = result["metrics"]
    return {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "label_acc": metrics["label_accuracy"],
            "classifier_acc": metrics["classifier_accuracy"], "iters_per_s": metrics["iters_per_s"],
            "seconds": metrics["seconds"]}


def _gi_notes(options: BenchOptions) -> str:
    return ("MNIST, the federated SmallCNN (untrained, or after 20 FedSGD rounds: 'trained'), FedSGD captures of a "
            "Flower simulation (IID, one round, every client's update captured by the curious server), "
            f"{GI_BATCHES[options.budget]} target batches per (attack, setting) (record seed = batch index), attack "
            f"preset '{GI_PRESET[options.budget]}' (federated/attack.py), adaptive attacker for clip (bound "
            f"{GI_CLIP_NORM:g}) and prune; noise std 0.01; GGL/GIFD priors: DCGAN on the 3,000 prior images "
            "('indist') or on digits 0-4 of them ('ood', against clients whose image is a 5-9). PSNR/SSIM on "
            "[0,1] after order matching; classifier_acc: the evaluation classifier on the matched "
            "reconstructions; iters_per_s: optimizer steps (GGL: candidate evaluations) per second, one thread. "
            "Tasks are smallcnn-bs<B>-<state>-<prior>-<defense>; the grid is one factor at a time around bs 1, "
            "untrained, undefended, in-distribution prior (federated/benchmarks.py).")


GI_ATTACKS = ("dlg", "idlg", "ig", "ggl", "gifd")


def _gi_tables(records: list[dict[str, Any]]) -> str:
    """As GIFD's tables print them: attacks as rows, one table per factor varied."""
    tasks = {r["task"] for r in records}
    attacks = [a for a in GI_ATTACKS if any(r["method"] == a for r in records)]
    parts = []
    for title, columns in (
            ("Batch size 1, untrained model, in-distribution prior: PSNR (dB) by client defense",
             {d: f"{GI_MODEL}-bs1-untrained-indist-{d}" for d in ("none", "noise", "clip", "prune")}),
            ("Undefended, untrained model: PSNR by batch size",
             {f"bs {b}": f"{GI_MODEL}-bs{b}-untrained-indist-none" for b in (1, 4, 8)}),
            ("Batch size 1, undefended: PSNR by model state and the prior's data",
             {f"{s}, {p} prior": f"{GI_MODEL}-bs1-{s}-{p}-none"
              for s in ("untrained", "trained") for p in ("indist", "ood")}),
            ("Batch size 1, untrained, noise defense: PSNR by the prior's data",
             {f"{p} prior": f"{GI_MODEL}-bs1-untrained-{p}-noise" for p in ("indist", "ood")})):
        present = {name: task for name, task in columns.items() if task in tasks}
        if not present:
            continue
        shown = [a for a in attacks if any(r["method"] == a and r["task"] in present.values() for r in records)]
        table = paper_table(records, "psnr", shown, list(present.values()))
        for name, task in present.items():
            table = table.replace(f" {task} ", f" {name} ", 1)
        parts.append(f"{title}:\n\n{table}")
    return "\n\n".join(parts)


def _gifd_beats_claim(records: list[dict[str, Any]]) -> str:
    """GIFD's claim: searching the generator's intermediate feature domains beats GGL (latent only)
    and generator-free IG."""
    task = f"{GI_MODEL}-bs1-untrained-indist-none"
    psnr = {a: cell_iqm(records, a, task, "psnr") for a in ("ig", "ggl", "gifd")}
    if any(v is None for v in psnr.values()):
        return "GIFD > GGL and IG in PSNR (paper, bs 1): not measured yet."
    order = sorted(psnr, key=psnr.get, reverse=True)
    verdict = "agrees" if order[0] == "gifd" else "does not agree"
    return (f"GIFD > GGL and IG in PSNR, bs 1 undefended (paper): the measured direction {verdict} (IQM PSNR "
            + ", ".join(f"{a} {psnr[a]:.1f}" for a in order) + " dB).")


def _gifd_ood_claim(records: list[dict[str, Any]]) -> str:
    """GIFD's claim: its advantage holds when the prior was trained on other data than the clients'."""
    parts = []
    for state in ("untrained", "trained"):
        gifd, ggl = (cell_iqm(records, a, f"{GI_MODEL}-bs1-{state}-ood-none", "psnr") for a in ("gifd", "ggl"))
        if gifd is not None and ggl is not None:
            ahead = "GIFD ahead" if gifd > ggl else "GGL ahead"
            parts.append(f"{state}: GIFD {gifd:.1f} vs GGL {ggl:.1f} dB ({ahead})")
    if not parts:
        return "GIFD > GGL with an out-of-distribution prior (paper): not measured yet."
    ahead = sum("GIFD ahead" in p for p in parts)
    verdict = "agrees" if ahead == len(parts) else "does not agree" if not ahead else "agrees in one state only"
    return (f"GIFD > GGL with an out-of-distribution prior (paper): the measured direction {verdict} "
            f"({'; '.join(parts)}).")


GRADIENT_INVERSION = Suite(
    name="gradient_inversion",
    title="GIFD (generative gradient inversion over feature domains) against IG, GGL, DLG and iDLG on Flower updates",
    grid=_gi_cells, record=None, headline="psnr", notes=_gi_notes, tables=_gi_tables,
    claims=(_gifd_beats_claim, _gifd_ood_claim), prepare=_prepare_inversion, budgets=("cpu", "paper", "tiny"),
)
