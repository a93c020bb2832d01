"""Benchmark suites of the federated domain, declared for the shared runner (``harness/bench.py``).

``mnist_classifier``: the small CNN on MNIST (stratified 8,000 / 2,000 split of the 10k test images),
the federated task model and the evaluation classifier of generated images. Acceptance target of
the foundation issue: >= 98% held-out accuracy in a few CPU minutes. ``workbench bench
mnist_classifier`` (budget ``cpu``: the quick preset, seeds 0 1 2; ``paper``: the paper preset).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from pathlib import Path
from typing import Any

from grp_workbench.federated.classifier import SPEC as CLASSIFIER
from grp_workbench.harness.bench import (
    BenchOptions,
    Cell,
    Suite,
    cell_iqm,
    cell_iqm_text,
    cell_values,
    figure_link,
    paper_table,
    rank_cells,
    ranked_verdict,
)
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
# Tasks: <model>-bs<B>-<untrained|trained>-<indist|ood>-<defense>[-fedavg<L>][-stage<k>] (issue 19).
# The cpu grid is one factor at a time around the small CNN at batch size 1, untrained, undefended,
# in-distribution prior, plus the headline setting that separates the attacks (the deeper ResNet,
# batch 4, partly trained); the full cross is the paper budget.


@dataclasses.dataclass(frozen=True)
class Design:
    """One block of the grid: the cross of its factors. GGL and GIFD run with the in-distribution
    prior everywhere and with the OOD prior (digits 0-4 against clients holding 5-9) at batch size 1
    under ``ood_defenses``."""

    attacks: tuple[str, ...]
    model: str = "smallcnn"
    states: tuple[str, ...] = ("untrained",)
    batch_sizes: tuple[int, ...] = (1,)
    defenses: tuple[str, ...] = ("none",)  # none noise clip prune soteria dp-eps<E> secagg<k>
    ood_defenses: tuple[str, ...] = ()
    clients: int = 40
    local_steps: int = 0  # 0: FedSGD; L: FedAvg, a client of B images taking L full-batch local steps
    stages: tuple[int, ...] = ()  # GIFD per-stage ablation: cells searching stages 0..k only
    targets: int = 16  # target updates per (attack, setting)


ALL_ATTACKS = ("dlg", "idlg", "ig", "ggl", "gifd")
GI_DESIGNS = {
    "cpu": [
        # (a) bs 1, untrained: every defense x every attack; the OOD prior under none and noise
        Design(ALL_ATTACKS, defenses=("none", "noise", "clip", "prune", "soteria", "dp-eps8", "secagg4"),
               ood_defenses=("none", "noise")),
        # (b) batch size, untrained, undefended
        Design(("ig", "ggl", "gifd"), batch_sizes=(4, 8)),
        # (c) the partly trained model (20 FedSGD rounds; 48 clients, so that 24 hold a 5-9 for the OOD prior)
        Design(("ig", "ggl", "gifd"), states=("trained",), ood_defenses=("none",), clients=48),
        # (d) GIFD's feature domains one by one (the generator has 4 blocks: stages 0-3; stage 3 is (a))
        Design(("gifd",), ood_defenses=("none",), stages=(0, 1, 2)),
        # (e) FedAvg: 5 local steps on the client's batch, inverted through the simulated steps (IG only)
        Design(("ig",), batch_sizes=(1, 4), local_steps=5, targets=8),
        # (f) the headline: the ResNet, batch 4, partly trained
        Design(ALL_ATTACKS, model="resnet", states=("trained",), batch_sizes=(4,), clients=48, targets=8),
    ],
    "paper": [Design(ALL_ATTACKS, model=model, states=("untrained", "trained"), batch_sizes=(1, 4, 8),
                     defenses=("none", "noise", "clip", "prune", "soteria", "dp-eps8", "secagg4"),
                     ood_defenses=("none", "noise", "clip", "prune"), clients=48)
              for model in ("smallcnn", "resnet")],
    "tiny": [  # seconds: a smoke test of every kind of cell
        Design(("ig", "gifd"), defenses=("none", "dp-eps8", "secagg2"), clients=4, targets=2),
        Design(("gifd",), stages=(0,), clients=4, targets=2),
        Design(("ig",), local_steps=2, clients=4, targets=2),
        Design(("ig",), model="resnet", clients=4, targets=2),
    ],
}
GI_PRESET = {"cpu": "quick", "paper": "paper", "tiny": "tiny"}
GI_HEADLINE = "resnet-bs4-trained-indist-none"
GI_CLIP_NORM = 4.0  # GIFD's bound; every bs-1 update of the untrained model is below it (2.4-3.2)
TRAINED_ROUNDS = 20


def gi_task(model: str, batch_size: int, state: str, prior: str | None, defense: str, local_steps: int = 0,
            stage: int | None = None) -> str:
    return (f"{model}-bs{batch_size}-{state}-{'ood' if prior == 'ood' else 'indist'}-{defense}"
            + (f"-fedavg{local_steps}" if local_steps else "") + (f"-stage{stage}" if stage is not None else ""))


def _gi_cells(options: BenchOptions) -> list[Cell]:
    from grp_workbench.federated.attack import attack_config

    cells = []
    for design in GI_DESIGNS[options.budget]:
        for state, batch_size, defense, attack in itertools.product(design.states, design.batch_sizes,
                                                                      design.defenses, design.attacks):
            for prior in (("in", "ood") if attack in ("ggl", "gifd") else (None,)):
                if prior == "ood" and (batch_size != 1 or defense not in design.ood_defenses):
                    continue
                for stage in design.stages or (None,):
                    task = gi_task(design.model, batch_size, state, prior, defense, design.local_steps, stage)
                    overrides = {"last_stage": stage} if stage is not None else {}
                    # the resolved settings, so a changed default (DLG's inner L-BFGS iterations,
                    # issue 19) makes the cell due again instead of "done"
                    settings = dataclasses.asdict(attack_config(attack, GI_PRESET[options.budget], overrides))
                    for index in options.seeds or range(design.targets):
                        params = {"model": design.model, "state": state, "batch_size": batch_size,
                                  "defense": defense, "clients": design.clients, "clip_norm": GI_CLIP_NORM,
                                  "local_steps": design.local_steps, "attack": attack, "prior": prior,
                                  "preset": GI_PRESET[options.budget], "index": index, "overrides": overrides,
                                  "attack_config": settings}
                        cells.append(Cell(attack, task, index, None, params, f"{task}/{attack}/batch{index:02d}",
                                          measure=_measure_inversion))
    return cells


def _secagg_clients(defense: str) -> int:
    return int(defense.removeprefix("secagg")) if defense.startswith("secagg") else 0


def _simulation_settings(params: dict[str, Any], folder: Path, targets: int) -> tuple[Any, int]:
    """The Flower simulation whose captures a cell attacks, and its number of clients."""
    from grp_workbench.federated.app import FLSettings

    defense, k = params["defense"], _secagg_clients(params["defense"])
    rounds = TRAINED_ROUNDS if params["state"] == "trained" else 1
    settings = {"num_server_rounds": rounds, "fraction_train": 1.0, "mode": "fedsgd", "model": params["model"],
                "batch_size": params["batch_size"], "defense": defense, "capture_rounds": str(rounds),
                "capture_clients": "all", "clip_norm": params["clip_norm"], "output_dir": str(folder)}
    if defense.startswith("dp-eps"):
        settings |= {"defense": "dp", "dp_epsilon": float(defense.removeprefix("dp-eps"))}
    if k:  # one aggregate of k clients per round: a round per target (the model takes a step per round)
        if params["state"] == "trained":
            raise ValueError("secagg cells are designed on the untrained model only")
        settings |= {"defense": "none", "secagg": True, "num_server_rounds": targets,
                     "capture_rounds": ",".join(str(r) for r in range(1, targets + 1)),
                     "fraction_train": k / params["clients"]}
    if params["local_steps"]:
        settings |= {"mode": "fedavg", "local_epochs": params["local_steps"],
                     "client_examples": params["batch_size"]}
    return FLSettings(**settings), params["clients"]


def _capture_folder(root: Path, params: dict[str, Any]) -> Path:
    defense = params["defense"] + (f"{params['clip_norm']:g}" if params["defense"] == "clip" else "")
    clients = f"-{params['clients']}clients" if params["clients"] != 40 else ""
    fedavg = f"-fedavg{params['local_steps']}" if params.get("local_steps") else ""
    return (root / "captures" / params.get("model", "smallcnn")
            / f"{params['state']}-bs{params['batch_size']}-{defense}{fedavg}{clients}")


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
    from grp_workbench.federated.simulate import simulate
    from grp_workbench.harness.trainer import train_cell

    root = GRADIENT_INVERSION.run_root(options)
    for spec, config, path in _gi_prerequisites(root, GI_PRESET[options.budget]).values():
        train_cell(spec, config, str(path), GI_PRESET[options.budget], quiet=False)
    targets = {}
    for cell in todo:
        folder = _capture_folder(root, cell.config)
        targets[folder] = max(targets.get(folder, 0), cell.config["index"] + 1)
    simulated = set()
    for cell in todo:
        folder = _capture_folder(root, cell.config)
        if folder in simulated or (folder / "summary.json").is_file():
            continue
        simulated.add(folder)
        # a secure-aggregation set has one capture per round: as many rounds as the design's targets
        design_targets = max([targets[folder]] + [d.targets for d in GI_DESIGNS[options.budget]
                                                  if _secagg_clients(cell.config["defense"])
                                                  and cell.config["defense"] in d.defenses])
        settings, clients = _simulation_settings(cell.config, folder, design_targets)
        simulate(settings, clients, cpus_per_client=1.0)


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
    found = (_capture_folder(root, params) / "captures")
    if _secagg_clients(params["defense"]):  # one aggregate per round, in round order
        captures = sorted(found.glob("round*-aggregate.pt"))
    else:  # in the order of the clients' partitions (the evaluator's bookkeeping; node ids are random)
        captures = sorted(found.glob("round*-node*.pt"), key=lambda c: client_truth(read_capture(c))["partition_id"])
    if params["prior"] == "ood":  # the OOD case: a prior of digits 0-4 against clients holding 5-9
        captures = [c for c in captures
                    if not set(capture_ground_truth(read_capture(c))[1].tolist()) & set(OOD_CLASSES)]
    if params["index"] >= len(captures):
        raise FederatedError(f"{cell.task}: {len(captures)} captured updates to attack, not {params['index'] + 1}; "
                             "simulate more clients.")
    attacker = _attacker(str(root), params["preset"])
    torch.set_num_threads(1)
    capture = captures[params["index"]]
    result = run_attack(params["attack"], capture, attacker[params["prior"]] if params["prior"] else None,
                        params["preset"], seed=params["index"], classifier=attacker["classifier"],
                        overrides=params.get("overrides"))
    torch.save({"images": result["images"].half(), "labels": result["labels"],
                "originals": result["originals"].half()}, folder / "reconstruction.pt")
    metrics = result["metrics"]
    record = {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "label_acc": metrics["label_accuracy"],
              "classifier_acc": metrics["classifier_accuracy"], "iters_per_s": metrics["iters_per_s"],
              "seconds": metrics["seconds"]}
    if "chosen_stage" in metrics:  # GIFD: which feature domain won by gradient cost
        record["chosen_stage"] = metrics["chosen_stage"]
    defense = read_capture(capture)["defense"]
    if "epsilon" in defense:  # local DP: the privacy of this released update
        record |= {"epsilon": float(defense["epsilon"]), "delta": float(defense["delta"])}
    return record


def _gi_notes(options: BenchOptions) -> str:
    return ("MNIST clients, Flower simulations (IID; every client's update captured by the curious server, or "
            "under secagg<k> the one aggregate of k clients per round, the model taking a FedSGD step per round). "
            "Victims: the SmallCNN, or the ResNet-14 on MNIST zero-padded to 32x32 (federated/models.py); "
            f"'trained' = after {TRAINED_ROUNDS} FedSGD rounds. Record seed = target batch index. Attack preset "
            f"'{GI_PRESET[options.budget]}' (federated/attack.py); adaptive attacker for clip (bound "
            f"{GI_CLIP_NORM:g}), prune and soteria; noise std 0.01; dp-eps<E>: Flower's LocalDpMod at (E, 1e-5) per "
            "released update with clip 4 (records carry epsilon). fedavg<L>: a client of B images taking L "
            "full-batch local steps, inverted by IG through the simulated steps. stage<k>: GIFD searching its "
            "latent and feature domains 0..k only. GGL/GIFD priors: DCGAN on the 3,000 prior images ('indist') or "
            "on digits 0-4 of them ('ood', against clients whose image is a 5-9). PSNR/SSIM on [0,1] after order "
            "matching; classifier_acc: the evaluation classifier on the matched reconstructions; iters_per_s: "
            "optimizer steps (GGL: candidate evaluations) per second, one thread. The grid is federated/benchmarks.py "
            "GI_DESIGNS.")


def _columns_table(records: list[dict[str, Any]], metric: str, columns: dict[str, str]) -> str | None:
    """paper_table over the attacks present, with short column names for the tasks."""
    tasks = {r["task"] for r in records}
    present = {name: task for name, task in columns.items() if task in tasks}
    if not present:
        return None
    shown = [a for a in ALL_ATTACKS if any(r["method"] == a and r["task"] in present.values() for r in records)]
    table = paper_table(records, metric, shown, list(present.values()))
    for name, task in present.items():
        table = table.replace(f" {task} ", f" {name} ", 1)
    return table


def _stage_table(records: list[dict[str, Any]]) -> str | None:
    """GIFD's per-stage ablation: PSNR when the search stops at stage k, and which stage the full
    search chose (by gradient cost) on how many targets."""
    rows = []
    for prior in ("indist", "ood"):
        full = f"smallcnn-bs1-untrained-{prior}-none"
        cells = {("stage 0 only" if k == 0 else f"stages 0..{k}"): f"{full}-stage{k}" for k in range(3)}
        cells["all (0..3)"] = full
        if not any(r["task"].startswith(f"{full}-stage") for r in records):
            continue
        chosen = [int(r["metrics"]["chosen_stage"]) for r in records
                  if (r["method"], r["task"]) == ("gifd", full) and "chosen_stage" in r["metrics"]]
        counts = ", ".join(f"stage {k}: {chosen.count(k)}" for k in sorted(set(chosen))) or "—"
        rows.append((prior, [cell_iqm_text(records, "gifd", task, "psnr", 1) for task in cells.values()], counts))
    if not rows:
        return None
    head = "| prior | " + " | ".join(cells) + " | stage chosen (full search) |"
    rule = "| --- |" + " --- |" * (len(cells) + 1)
    return "\n".join([head, rule] + [f"| {prior} | " + " | ".join(values) + f" | {counts} |"
                                      for prior, values, counts in rows])


DEFENSE_ORDER = ("none", "noise", "clip", "prune", "soteria", "dp-eps", "secagg")


def _measured_defenses(records: list[dict[str, Any]]) -> list[str]:
    """The client defenses measured at batch size 1 on the untrained small CNN (dp-eps<E> and
    secagg<k> with whatever E and k the grid used), in the order of GIFD's defense table."""
    found = {m.group(1) for r in records
             if (m := re.fullmatch(r"smallcnn-bs1-untrained-indist-([a-z]+(?:-eps)?[0-9.]*)", r["task"]))}
    return sorted(found, key=lambda d: (next(i for i, p in enumerate(DEFENSE_ORDER) if d.startswith(p)), d))


def _fedavg_columns(records: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
    """FedAvg cells beside the FedSGD cell of the same batch size: the title and the columns."""
    found = sorted({(int(m.group(1)), int(m.group(2))) for r in records
                    if (m := re.fullmatch(r"smallcnn-bs(\d+)-untrained-indist-none-fedavg(\d+)", r["task"]))})
    columns = {}
    for batch_size, steps in found:
        columns[f"bs {batch_size} fedsgd"] = f"smallcnn-bs{batch_size}-untrained-indist-none"
        columns[f"bs {batch_size} fedavg{steps}"] = f"smallcnn-bs{batch_size}-untrained-indist-none-fedavg{steps}"
    steps = ", ".join(str(s) for s in sorted({s for _, s in found})) or "L"
    return (f"FedAvg ({steps} local full-batch steps, inverted through the simulated steps) against FedSGD, "
            "untrained SmallCNN, undefended: PSNR", columns)


def _gi_tables(records: list[dict[str, Any]]) -> str:
    """As GIFD's tables print them: attacks as rows, one table per factor varied."""
    defenses = _measured_defenses(records)
    fedavg_title, fedavg_columns = _fedavg_columns(records)
    tables = [
        ("Headline: the ResNet-14, batch size 4, partly trained, undefended, beside the untrained SmallCNN at "
         "batch size 4 (PSNR, dB)",
         _columns_table(records, "psnr", {"resnet bs4 trained": GI_HEADLINE,
                                          "smallcnn bs4 untrained": "smallcnn-bs4-untrained-indist-none"})
         if any(r["task"] == GI_HEADLINE for r in records) else None),
        ("Batch size 1, untrained SmallCNN, in-distribution prior: PSNR (dB) by client defense",
         _columns_table(records, "psnr", {d: f"smallcnn-bs1-untrained-indist-{d}" for d in defenses})),
        ("Undefended, untrained SmallCNN: PSNR by batch size",
         _columns_table(records, "psnr", {f"bs {b}": f"smallcnn-bs{b}-untrained-indist-none" for b in (1, 4, 8)})),
        ("Batch size 1, undefended SmallCNN: PSNR by model state and the prior's data",
         _columns_table(records, "psnr", {f"{s}, {p} prior": f"smallcnn-bs1-{s}-{p}-none"
                                          for s in ("untrained", "trained") for p in ("indist", "ood")})),
        ("Batch size 1, untrained SmallCNN, noise defense: PSNR by the prior's data",
         _columns_table(records, "psnr", {f"{p} prior": f"smallcnn-bs1-untrained-{p}-noise"
                                          for p in ("indist", "ood")})),
        (fedavg_title, _columns_table(records, "psnr", fedavg_columns)),
        ("GIFD per stage, batch size 1, untrained SmallCNN, undefended: PSNR (dB) when the search stops at "
         "stage k", _stage_table(records)),
    ]
    return "\n\n".join(f"{title}:\n\n{table}" for title, table in tables if table)


VERDICT = {"ahead": "agrees", "behind": "does not agree", "tied": "is not shown (CIs overlap)"}


def _ranking_text(ranking: list[tuple[str, float, float, float]]) -> str:
    return ", ".join(f"{a} {iqm:.1f} [{low:.1f}, {high:.1f}]" for a, iqm, low, high in ranking)


def _gifd_beats_claim(records: list[dict[str, Any]]) -> str:
    """GIFD's claim: searching the generator's intermediate feature domains beats GGL (latent only)
    and generator-free IG; judged on the headline setting, and at bs 1 on the small CNN."""
    parts = []
    for task in (GI_HEADLINE, "smallcnn-bs1-untrained-indist-none"):
        ranking = rank_cells(records, ("ig", "ggl", "gifd"), task, "psnr")
        if ranking is not None:
            parts.append(f"{task}: {VERDICT[ranked_verdict(ranking, 'gifd')]} (IQM PSNR [95% CI] "
                         f"{_ranking_text(ranking)} dB)")
    if not parts:
        return "GIFD > GGL and IG in PSNR (paper): not measured yet."
    return "GIFD > GGL and IG in PSNR (paper), measured direction: " + "; ".join(parts) + "."


def _gifd_ood_claim(records: list[dict[str, Any]]) -> str:
    """GIFD's claim: its advantage holds when the prior was trained on other data than the clients'."""
    parts = []
    for state in ("untrained", "trained"):
        ranking = rank_cells(records, ("gifd", "ggl"), f"smallcnn-bs1-{state}-ood-none", "psnr")
        if ranking is not None:
            parts.append(f"{state}: {VERDICT[ranked_verdict(ranking, 'gifd')]} ({_ranking_text(ranking)} dB)")
    if not parts:
        return "GIFD > GGL with an out-of-distribution prior (paper): not measured yet."
    line = f"GIFD > GGL with an out-of-distribution prior (paper), measured direction: {'; '.join(parts)}"
    early = {p: cell_iqm(records, "gifd", f"smallcnn-bs1-untrained-{p}-none-stage1", "psnr") for p in ("ood", "indist")}
    full = cell_iqm(records, "gifd", "smallcnn-bs1-untrained-ood-none", "psnr")
    if None not in early.values() and full is not None:
        line += (f"; limited to the latent and the first two feature domains GIFD scores {early['ood']:.1f} dB with "
                 f"the OOD prior ({early['indist']:.1f} with the in-distribution one) against {full:.1f} with all "
                 f"of them: the deeper, near-pixel domains add {full - early['ood']:.1f} dB whichever prior")
    return line + "."


def _gifd_defense_claim(records: list[dict[str, Any]]) -> str:
    """GIFD's claim: it stays the strongest attack under the common defenses (its defense table).
    GIFD counts as strongest under a defense only where its CI clears every other attack's; the
    classifier accuracy of the leader says whether "strongest" still recovers the digit."""
    parts, wins = [], 0
    for defense in (d for d in _measured_defenses(records) if d != "none"):
        task = f"smallcnn-bs1-untrained-indist-{defense}"
        measured = [a for a in ALL_ATTACKS if cell_values(records, a, task, "psnr")]
        if "gifd" not in measured or len(measured) < 2:
            continue
        ranking = rank_cells(records, measured, task, "psnr")
        verdict = ranked_verdict(ranking, "gifd")
        wins += verdict == "ahead"
        leader = ranking[0][0]
        # the mean (an IQM of per-target 0/1 accuracies at batch size 1 rounds to 0 or 1)
        accuracies = cell_values(records, leader, task, "classifier_acc")
        digit = sum(accuracies) / len(accuracies) if accuracies else None
        parts.append(f"{defense}: gifd {verdict}, best IQM {leader} {ranking[0][1]:.1f} dB"
                     + (f" (mean classifier accuracy {digit:.2f})" if digit is not None else "")
                     + ("" if leader == "gifd" else f", gifd {next(r[1] for r in ranking if r[0] == 'gifd'):.1f}"))
    if not parts:
        return "GIFD is the strongest attack under defenses (paper): not measured yet."
    return (f"GIFD is the strongest attack under defenses (paper): GIFD ahead (CI above every other attack's) "
            f"under {wins} of {len(parts)} defenses ({'; '.join(parts)}).")


OVERVIEW_TASKS = (GI_HEADLINE, "smallcnn-bs1-untrained-indist-none", "smallcnn-bs1-untrained-indist-secagg4",
                  "smallcnn-bs4-untrained-indist-none")
OVERVIEW_IMAGES = 8


def _gi_overviews(options: BenchOptions, cells: list[Cell], records: list[dict[str, Any]]) -> str:
    """Originals and every attack's reconstructions of the first target batches of the key tasks, one
    figure per task in ``overview/``, drawn from the reconstructions the cells keep (an earlier
    run's figure is linked when these runs are not on this machine)."""
    import torch

    from grp_workbench.federated.attack import save_grid

    out, root = GRADIENT_INVERSION.out_dir(options), GRADIENT_INVERSION.run_root(options)
    links = []
    for task in OVERVIEW_TASKS:
        path = out / "overview" / f"{task}.png"
        rows, originals = {}, None
        for attack in ALL_ATTACKS:
            found = sorted((root / task / attack).glob("batch*/reconstruction.pt"))
            kept = [torch.load(f) for f in found]
            images = [b["images"].float() for b in kept]
            if images and sum(len(i) for i in images) >= OVERVIEW_IMAGES:
                rows[attack] = torch.cat(images)[:OVERVIEW_IMAGES]
                if originals is None:
                    originals = torch.cat([b["originals"].float() for b in kept])[:OVERVIEW_IMAGES]
        if rows and any(c.task == task for c in cells):
            path.parent.mkdir(parents=True, exist_ok=True)
            # order-matched within each target batch, and every attack's batches in the same order
            save_grid(rows, originals, path)
        links.append(figure_link(path, f"{task}: originals and each attack's reconstructions", out))
    text = "".join(link for link in links if link)
    return ("Originals (top) and each attack's reconstructions of the first target batches:\n\n" + text) if text else ""


GRADIENT_INVERSION = Suite(
    name="gradient_inversion",
    title="GIFD (generative gradient inversion over feature domains) against IG, GGL, DLG and iDLG on Flower updates",
    grid=_gi_cells, record=None, headline="psnr", notes=_gi_notes, tables=_gi_tables,
    claims=(_gifd_beats_claim, _gifd_ood_claim, _gifd_defense_claim), prepare=_prepare_inversion,
    extra_markdown=_gi_overviews,
    budgets=("cpu", "paper", "tiny"),
)
