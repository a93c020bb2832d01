"""Run a gradient-inversion attack on an update the curious server captured, and score it.

    workbench federated attack gifd --capture runs/federated/app/captures/round001-node<id>.pt \
        --prior runs/priors/in --preset quick --out reports/attack

The attacker's inputs are the capture alone (global weights, the client's update, batch size,
learning rate, the defense's public parameters) plus, for GGL and GIFD, a generator trained on
images no client holds (``workbench federated train-prior``). The ground truth is recomputed
afterwards, for scoring only, from the note the client kept of what it trained on (``capture_ground_truth``).

Presets: ``paper`` uses the official iteration counts (IG 15,000 iterations x 4 restarts; GGL 800
CMA-ES iterations x 50 samples; GIFD 1,000 steps per stage x 4 restarts); ``quick`` is scaled for a
CPU; ``tiny`` is for tests.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from grp_workbench.federated import FederatedError
from grp_workbench.federated.app import client_pool, make_model, read_capture
from grp_workbench.federated.attacks import dlg, ggl, gifd
from grp_workbench.federated.attacks import inverting_gradients as ig
from grp_workbench.federated.metrics import match_order, reconstruction_metrics
from grp_workbench.harness.config import apply_overrides
from grp_workbench.harness.runs import read_json

ATTACKS = ("dlg", "idlg", "ig", "ggl", "gifd")
GENERATIVE = ("ggl", "gifd")
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"dlg": {}, "idlg": {"infer_labels": True}, "ig": {}, "ggl": {}, "gifd": {}},
    # quick: 10 L-BFGS steps of 20 inner iterations (twice the inner work of the former 100 steps of 1)
    "quick": {"dlg": {"iterations": 10}, "idlg": {"iterations": 10, "infer_labels": True},
              "ig": {"iterations": 500, "restarts": 2}, "ggl": {"budget": 60, "num_sample": 20, "restarts": 1},
              "gifd": {"steps_per_stage": 150, "restarts": 2}},
    "tiny": {"dlg": {"iterations": 3}, "idlg": {"iterations": 3, "infer_labels": True},
             "ig": {"iterations": 10, "restarts": 1}, "ggl": {"budget": 2, "num_sample": 4, "restarts": 1},
             "gifd": {"steps_per_stage": 3, "restarts": 1}},
}


def attack_config(name: str, preset: str, overrides: dict[str, Any] | None = None) -> Any:
    """The attack's settings: its config class's defaults, then the preset, then ``overrides``."""
    config_cls = {"dlg": dlg.DLGConfig, "idlg": dlg.DLGConfig, "ig": ig.InvertingGradientsConfig,
                  "ggl": ggl.GGLConfig, "gifd": gifd.GIFDConfig}[name]
    return apply_overrides(config_cls(**PRESETS[preset][name]), overrides or {}, where=f"{name} setting")


def client_truth(record: dict[str, Any]) -> dict[str, Any]:
    """The note the client wrote for a captured round (``federated/app.py::write_client_truth``):
    partition id, number of partitions, the pool indices it trained on. For a secure-aggregation
    capture (``node_ids``: the average of several clients), the union of their notes. Evaluation only."""
    from grp_workbench.federated.app import client_truth_path

    notes = []
    for node in record.get("node_ids") or [record["node_id"]]:
        path = client_truth_path(record["settings"]["output_dir"], record["round"], node)
        if not path.is_file():
            raise FederatedError(f"no client note {path} for this capture (round {record['round']}, node {node}): "
                                 f"scoring needs the simulation's {path.parent.name}/ folder next to captures/; "
                                 "capture the update again with `workbench federated simulate`.")
        notes.append(read_json(path))
    if len(notes) == 1:
        return notes[0]
    return {"round": record["round"], "node_ids": record["node_ids"],
            "partition_id": min(n["partition_id"] for n in notes), "partition_ids": [n["partition_id"] for n in notes],
            "indices": [i for n in notes for i in n["indices"]]}


def capture_ground_truth(record: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels behind a capture (evaluation only: the attacker never sees them), joined by
    round and node id: the FedSGD batch, or for a FedAvg update every image the client trained on."""
    settings = record["settings"]
    data, _ = client_pool(settings.get("client_data", "mnist"), settings["data_dir"], settings["seed"])
    indices = torch.as_tensor(client_truth(record)["indices"], dtype=torch.long)
    return data.images[indices], data.labels[indices]


def victim_model(record: dict[str, Any]) -> torch.nn.Module:
    model = make_model(record["settings"]["seed"], record["settings"].get("model", "smallcnn"))
    model.load_state_dict(record["global_weights"])
    return model.eval()


def load_classifier(run_dir: str | Path) -> torch.nn.Module:
    """The evaluation classifier of a ``workbench federated train-classifier`` run, frozen."""
    from grp_workbench.federated.models import SmallCNN
    from grp_workbench.harness.runs import RunDir

    run = RunDir(run_dir)
    state = run.last_algorithm_state("trained classifier", "train one with `workbench federated train-classifier "
                                     f"--preset paper --run-dir {run_dir}`.")
    config = run.header["config"]
    model = SmallCNN(width=config["width"], hidden=config["hidden"], dropout=config["dropout"])
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False)


def run_attack(name: str, capture: str | Path, prior: torch.nn.Module | None = None, preset: str = "quick",
               seed: int = 0, adaptive: bool = True, overrides: dict[str, Any] | None = None,
               classifier: torch.nn.Module | None = None) -> dict[str, Any]:
    """Reconstruct the batch behind ``capture`` with attack ``name``; returns metrics and images.

    Metrics: psnr, ssim, label_accuracy, classifier_accuracy (with ``classifier``), seconds,
    iterations (optimizer steps; for GGL candidate evaluations) and iters_per_s."""
    if name not in ATTACKS:
        raise FederatedError(f"attack {name!r} is not one of {', '.join(ATTACKS)}.")
    if preset not in PRESETS:
        raise FederatedError(f"preset {preset!r} is not one of {', '.join(PRESETS)}.")
    if name in GENERATIVE and prior is None:
        raise FederatedError(f"{name} searches a generator's domains: pass --prior RUN_DIR of a "
                             "`workbench federated train-prior` run.")
    record = read_capture(capture)
    fedavg = record["mode"] != "fedsgd"
    if fedavg and name != "ig":
        raise FederatedError(f"{capture} is a FedAvg update; of these attacks only ig inverts one (through the "
                             "client's local steps, as GIFD's FedAvgReconstructor); the others invert a FedSGD "
                             "gradient.")
    model = victim_model(record)
    target = record["update"] if fedavg else record["gradient"]
    # FedAvg: every image of the client; its local steps are matched as full-batch steps, exact when
    # the client's data fits one batch (else the attacker does not know the minibatch order)
    batch_size = record["num_examples"] // max(record["settings"].get("local_epochs", 1), 1) if fedavg \
        else record["batch_size"]
    defense = record["defense"] if adaptive and record["defense"]["name"] in ("clip", "prune") else None
    if adaptive and record["defense"]["name"] == "soteria":  # the pruned columns are zero in the target
        defense = {"name": "soteria", "feature_mask": (target[-2][0] != 0).to(target[-2].dtype)}
    generator = torch.Generator().manual_seed(seed)
    config = attack_config(name, preset, overrides)
    start = time.perf_counter()
    if name in ("dlg", "idlg"):
        images, labels, info = dlg.reconstruct(model, target, batch_size, (1, 28, 28), config, generator, defense)
    elif name == "ig":
        images, labels, info = ig.reconstruct(model, target, batch_size, (1, 28, 28), config, generator, defense,
                                              local_steps=record["local_steps"] if fedavg else 0,
                                              local_lr=record["local_lr"])
    else:
        images, labels, info = (ggl if name == "ggl" else gifd).reconstruct(model, target, batch_size, prior, config,
                                                                            generator, defense)
    seconds = time.perf_counter() - start
    originals, true_labels = capture_ground_truth(record)
    metrics = reconstruction_metrics(images, originals, true_labels, labels, classifier)
    metrics |= {"seconds": seconds, **{k: float(v) for k, v in info.items()}}
    metrics["iters_per_s"] = metrics["iterations"] / max(seconds, 1e-9)
    return {"metrics": metrics, "images": images[match_order(images, originals)], "originals": originals,
            "labels": labels, "true_labels": true_labels}


def save_grid(rows: dict[str, torch.Tensor], originals: torch.Tensor, path: str | Path) -> Path:
    """A figure: originals on top, one row of (order-matched) reconstructions per attack."""
    from grp_workbench.harness.report import plot_image_grid

    batches = {"original": originals, **rows}
    return plot_image_grid({name: [image[0].detach().cpu().numpy() for image in images]
                            for name, images in batches.items()}, path, cmap="gray", vmin=0, vmax=1)
