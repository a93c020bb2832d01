"""Our inverting-gradients attack beside breaching's, on the same captured Flower updates (issue 19).

breaching (JonasGeiping/breaching, `pip install breaching==0.1.2`) imports torchvision, and this
project's CPU machine has no CPU torchvision build, so the comparison is run where a CUDA torch is
installed (a lent GPU machine). Both attacks get the same update, the same victim weights, the same
number of iterations and restarts, and label inference from the update (breaching's default
``bias-corrected`` strategy; ours, iDLG's rule generalised to batches). breaching runs its own
``invertinggradients`` attack config (signed Adam, step 0.1, TV 0.2 on its mean-dx+dy TV) with only
``optim.max_iterations`` and ``restarts.num_trials`` overridden; ours runs ``attack_config("ig", preset)``.
Images are in [0, 1] for both (breaching's metadata: mean 0, std 1, boxed), scored by the same
``reconstruction_metrics``. Ours runs on the CPU (our attacks draw their start there), breaching on
``--device``: compare their iterations/s only when both ran on the same device (``--device cpu``).

    python scripts/compare_breaching.py --targets 8 \
        --captures runs/bench/gradient_inversion/captures/smallcnn/untrained-bs1-none/captures

Writes benchmarks/gradient_inversion/diagnostics/breaching_ig.json: per target, PSNR, SSIM, label
accuracy and iterations/s of each implementation, and the device they ran on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

from grp_workbench.federated.app import read_capture
from grp_workbench.federated.attack import attack_config, capture_ground_truth, client_truth, victim_model
from grp_workbench.federated.attacks import inverting_gradients as ig
from grp_workbench.federated.metrics import reconstruction_metrics
from grp_workbench.harness.runs import atomic_write_json

OUT = Path("benchmarks/gradient_inversion/diagnostics/breaching_ig.json")


def import_breaching():
    try:
        import breaching
    except ImportError as error:  # breaching's own import of torchvision fails on a CPU-only torch here
        raise SystemExit(f"breaching cannot be imported ({error}). Install it where a matching torchvision "
                         "exists: `pip install breaching==0.1.2` beside a CUDA torch build.") from error
    return breaching


def breaching_ig(breaching, model: torch.nn.Module, record: dict, iterations: int, restarts: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """breaching's invertinggradients attack on one FedSGD capture: (images in [0, 1], labels)."""
    cfg = breaching.get_attack_config("invertinggradients", overrides=[
        f"optim.max_iterations={iterations}", f"restarts.num_trials={restarts}"])
    setup = {"device": device, "dtype": torch.float}
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg, setup)
    metadata = SimpleNamespace(shape=(1, 28, 28), mean=[0.0], std=[1.0], modality="vision", classes=10)
    payload = {"parameters": [p.detach().to(device) for p in model.parameters()],
               "buffers": [b.detach().to(device) for b in model.buffers()] or None, "metadata": metadata}
    shared = {"gradients": [g.to(device) for g in record["gradient"]], "buffers": None,
              "metadata": {"num_data_points": record["batch_size"], "labels": None, "local_hyperparams": None}}
    reconstruction, _ = attacker.reconstruct([payload], [shared], {}, dryrun=False)
    return reconstruction["data"].clamp(0, 1).cpu(), reconstruction["labels"].cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", type=Path, required=True, help="a capture folder of a Flower simulation")
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--preset", default="quick", help="our IG preset; breaching gets its iterations/restarts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not args.captures.is_dir():
        raise SystemExit(f"--captures {args.captures}: not a folder; run `workbench bench gradient_inversion` "
                         "(or `workbench federated simulate --set capture_clients=all`) first.")
    breaching = import_breaching()
    device = torch.device(args.device)
    captures = sorted(args.captures.glob("round*-node*.pt"),
                      key=lambda c: client_truth(read_capture(c))["partition_id"])[:args.targets]
    if not captures:
        raise SystemExit(f"--captures {args.captures}: no round*-node*.pt FedSGD captures in it.")
    config = attack_config("ig", args.preset, {})
    rows = []
    for index, capture in enumerate(tqdm(captures, desc="targets")):
        record = read_capture(capture)
        if record["mode"] != "fedsgd":
            raise SystemExit(f"{capture}: a {record['mode']} update; this comparison inverts FedSGD gradients.")
        originals, true_labels = capture_ground_truth(record)
        for name in ("ours", "breaching"):
            start = time.perf_counter()
            if name == "ours":  # our attacks draw their start on the CPU: they run there
                images, labels, _ = ig.reconstruct(victim_model(record), record["gradient"], record["batch_size"],
                                                   (1, 28, 28), config, torch.Generator().manual_seed(index))
            else:
                images, labels = breaching_ig(breaching, victim_model(record).to(device), record, config.iterations,
                                              config.restarts, device)
            seconds = time.perf_counter() - start
            metrics = reconstruction_metrics(images, originals, true_labels, labels, None)
            rows.append({"target": index, "implementation": name,
                         "device": "cpu" if name == "ours" else str(device), "psnr": metrics["psnr"],
                         "ssim": metrics["ssim"],
                         "label_accuracy": metrics["label_accuracy"], "seconds": seconds,
                         "iters_per_s": config.iterations * config.restarts / seconds})
            tqdm.write(str(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"captures": str(args.captures), "preset": args.preset,
                                 "iterations": config.iterations, "restarts": config.restarts,
                                 "device": str(device), "torch": torch.__version__, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
