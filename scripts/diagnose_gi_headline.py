"""Why every attack fails on the gradient-inversion headline cell (ResNet-14, batch 4, 20 FedSGD rounds).

Two candidate causes, separated on the benchmark's own captures: wrong labels (at batch 4 the labels
are inferred from the last layer's gradient, which is exact only for distinct labels of an untrained
model) and too short a search (the ``quick`` preset's 2 x 500 IG iterations against inversefed's
24,000). IG runs on the first targets of the headline cell three ways: as benchmarked (inferred labels,
quick), with the client's true labels, and with the true labels and ``--scale`` times the iterations.

    python scripts/diagnose_gi_headline.py --targets 2 --scale 4

Reads the captures of a finished ``workbench bench gradient_inversion`` run; writes
benchmarks/gradient_inversion/diagnostics/headline_ig.json (one row per target and variant).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from grp_workbench.federated.app import read_capture
from grp_workbench.federated.attack import attack_config, capture_ground_truth, client_truth, victim_model
from grp_workbench.federated.attacks import inverting_gradients as ig
from grp_workbench.federated.metrics import reconstruction_metrics
from grp_workbench.harness.runs import atomic_write_json

CAPTURES = Path("runs/bench/gradient_inversion/captures/resnet/trained-bs4-none-48clients/captures")
OUT = Path("benchmarks/gradient_inversion/diagnostics/headline_ig.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", type=Path, default=CAPTURES)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--scale", type=int, default=4, help="iterations x this for the long search")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not args.captures.is_dir():
        raise SystemExit(f"--captures {args.captures}: not found; run `workbench bench gradient_inversion --tasks "
                         "resnet-bs4-trained-indist-none` first.")
    torch.set_num_threads(1)
    # the benchmark's order: by the client's partition id (batch00 = the lowest)
    captures = sorted(args.captures.glob("round*-node*.pt"),
                      key=lambda c: client_truth(read_capture(c))["partition_id"])
    quick = attack_config("ig", "quick", {})
    variants = {"inferred labels, quick": (quick, False), "true labels, quick": (quick, True),
                f"true labels, {args.scale}x iterations": (
                    dataclasses.replace(quick, iterations=quick.iterations * args.scale), True)}
    rows = []
    for index, capture in enumerate(tqdm(captures[:args.targets], desc="targets")):
        record = read_capture(capture)
        model, target = victim_model(record), record["gradient"]
        originals, true_labels = capture_ground_truth(record)
        for name, (config, given) in variants.items():
            start = time.perf_counter()
            images, labels, _ = ig.reconstruct(model, target, record["batch_size"], (1, 28, 28), config,
                                               torch.Generator().manual_seed(index), None,
                                               labels=true_labels if given else None)
            metrics = reconstruction_metrics(images, originals, true_labels, labels, None)
            rows.append({"target": index, "variant": name, "iterations": config.iterations,
                         "restarts": config.restarts, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                         "label_accuracy": metrics["label_accuracy"], "seconds": time.perf_counter() - start})
            tqdm.write(json.dumps(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"captures": str(args.captures), "true_labels_note": "the client's own labels, "
                                 "which a curious server does not have: a diagnostic, not an attack", "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
