"""Benchmark: gradient inversion of captured Flower updates, IG vs GGL vs GIFD, under client defenses.

1. For each (defense, batch size) a Flower simulation (``federated.simulate``, FedSGD, IID, one
   round, every client captured by the curious server) produces the target updates: one per client.
2. Every attack inverts the first ``--batches`` captures of each cell; GGL and GIFD run with the
   in-distribution prior (DCGAN on the 3,000 prior images) and, for batch size 1, with the
   out-of-distribution prior (digits 0-4) on captures whose image is a 5-9.
3. One record per (attack, cell, target batch): PSNR, SSIM, label accuracy, the evaluation
   classifier's accuracy on the reconstructions, attack iterations/s; IQM and 95% CIs over target
   batches (the records' ``seed`` is the batch index); a grid of originals and reconstructions per
   cell. Tasks are named ``bs<B>-<untrained|trained>-<indist|ood>-<defense>`` (the prior's case; IG
   and DLG use no prior and appear under ``indist``).

Each (attack, cell, batch) result is appended to ``<runs>/results.jsonl`` when done, so a killed run
continues where it stopped; results.json is rewritten after every cell, labelled with progress.

    python scripts/bench_gradient_inversion.py --batch-sizes 1 --defenses none --batches 16 \
        --classifier runs/priors/classifier
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from grp_workbench.federated.app import FLSettings, read_capture
from grp_workbench.federated.attack import capture_ground_truth, run_attack, save_grid
from grp_workbench.federated.generative.dcgan import OOD_CLASSES, load_generator
from grp_workbench.harness.report import write_results


def captures_for(runs: Path, defense: str, batch_size: int, clients: int, state: str, clip_norm: float) -> list[Path]:
    """The captured updates of one simulation (run once, then reused)."""
    out = runs / "captures" / (f"{state}-bs{batch_size}-{defense}" + (f"{clip_norm:g}" if "clip" in defense else "")
                               + (f"-{clients}clients" if clients != 40 else ""))
    summary = out / "summary.json"
    if not summary.is_file():
        from grp_workbench.federated.simulate import simulate

        rounds = 1 if state == "untrained" else 20
        settings = FLSettings(num_server_rounds=rounds, fraction_train=1.0, mode="fedsgd", batch_size=batch_size,
                              defense=defense, capture_rounds=str(rounds), capture_partitions="all",
                              clip_norm=clip_norm, output_dir=str(out))
        simulate(settings, clients, cpus_per_client=1.0)
    return sorted((out / "captures").glob("round*-client*.pt"))


def overview_figures(runs: Path, done: dict[tuple, dict], out: Path, images: int = 8) -> None:
    """Per task: the first ``images`` client images and, one row per attack, their kept reconstructions."""
    order = ["dlg", "idlg", "ig", "ggl", "gifd"]
    for task in sorted({task for _, task, _ in done}):
        rows, originals = {}, []
        for method in sorted({m for m, t, _ in done if t == task}, key=lambda m: order.index(m) if m in order else 9):
            kept, count = [], 0
            for index in range(len(done)):
                record = done.get((method, task, index))
                path = runs / "reconstructions" / task / f"{method}-{index:03d}.pt"
                if record is None or not path.is_file() or count >= images:
                    break
                kept.append(torch.load(path)["images"].float())
                if not rows:  # the originals once per task, from the first attack's targets
                    originals.append(capture_ground_truth(read_capture(record["capture"]))[0])
                count += len(kept[-1])
            if kept:
                rows[method] = torch.cat(kept)[:images]
        if rows:
            shown = min(len(r) for r in rows.values())
            save_grid({m: r[:shown] for m, r in rows.items()}, torch.cat(originals)[:shown],
                      out / "overview" / f"{task}.png")


def load_done(path: Path) -> dict[tuple, dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["method"], r["task"], r["seed"]): r for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["ig", "ggl", "gifd"], help="dlg idlg ig ggl gifd")
    parser.add_argument("--defenses", nargs="+", default=["none", "noise", "clip", "prune"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--states", nargs="+", default=["untrained"], help="untrained | trained (round 20)")
    parser.add_argument("--batches", type=int, default=16, help="target batches per cell")
    parser.add_argument("--clients", type=int, default=40, help="clients per simulation (captures available)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--prior-in", default="runs/priors/in")
    parser.add_argument("--prior-ood", default="runs/priors/ood")
    parser.add_argument("--no-ood", action="store_true")
    parser.add_argument("--ood-defenses", nargs="+", default=None,
                        help="defenses whose bs-1 cells also run the OOD prior (default: all)")
    parser.add_argument("--classifier", default="runs/priors/classifier", help="train-classifier run (classifier_acc)")
    parser.add_argument("--clip-norm", type=float, default=4.0,
                        help="clip bound (GIFD's 4; every bs-1 update of the untrained model is below it, 2.4-3.2)")
    parser.add_argument("--note", default="", help="appended to the results' notes (e.g. other commands that "
                        "filled the same results.jsonl)")
    parser.add_argument("--runs", default="runs/bench/gradient_inversion")
    parser.add_argument("--out", default="benchmarks/gradient_inversion")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    priors = {"in": load_generator(args.prior_in)}
    if not args.no_ood:
        priors["ood"] = load_generator(args.prior_ood)
    from grp_workbench.federated.attack import load_classifier

    classifier = load_classifier(args.classifier)
    jsonl = runs / "results.jsonl"
    done = load_done(jsonl)
    command = "python scripts/bench_gradient_inversion.py " + shlex.join(sys.argv[1:])

    cells = []
    for state in args.states:
        for batch_size in args.batch_sizes:
            for defense in args.defenses:
                for attack in args.attacks:
                    for prior in (["in", "ood"] if attack in ("ggl", "gifd") else [None]):
                        if prior == "ood" and (args.no_ood or batch_size != 1 or (
                                args.ood_defenses is not None and defense not in args.ood_defenses)):
                            continue
                        cells.append((state, batch_size, defense, attack, prior))
    for number, (state, batch_size, defense, attack, prior) in enumerate(cells, start=1):
        task = f"bs{batch_size}-{state}-{'ood' if prior == 'ood' else 'indist'}-{defense}"
        method = attack
        captures = captures_for(runs, defense, batch_size, args.clients, state, args.clip_norm)
        if prior == "ood":  # the OOD claim: a prior of digits 0-4 against clients holding 5-9
            captures = [c for c in captures if not set(capture_ground_truth(read_capture(c))[1].tolist())
                        & set(OOD_CLASSES)]
        targets = captures[: args.batches]
        if len(targets) < args.batches:
            print(f"warning: {task} has {len(targets)} of {args.batches} target batches", flush=True)
        grid_rows, originals = {}, None
        print(f"[{number}/{len(cells)}] {task} {method}: {len(targets)} target batches", flush=True)
        for index, capture in enumerate(targets):
            key = (method, task, index)
            if key not in done or done[key]["capture"] != str(capture):  # a newer capture set replaces the old
                result = run_attack(attack, capture, priors.get(prior), args.preset, seed=index, classifier=classifier)
                metrics = result["metrics"]
                row = {"method": method, "task": task, "seed": index, "capture": str(capture),
                       "metrics": {"psnr": metrics["psnr"], "ssim": metrics["ssim"],
                                   "label_acc": metrics["label_accuracy"],
                                   "classifier_acc": metrics["classifier_accuracy"],
                                   "iters_per_s": metrics["iters_per_s"], "seconds": metrics["seconds"]}}
                # the reconstructions themselves, so that later metrics need no rerun
                kept = runs / "reconstructions" / task / f"{method}-{index:03d}.pt"
                kept.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"images": result["images"].half(), "labels": result["labels"]}, kept)
                with open(jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")
                done[key] = row
                if index == 0:
                    grid_rows[method], originals = result["images"], result["originals"]
        if originals is not None:
            save_grid(grid_rows, originals, out / "grids" / f"{task}-{method}.png")
        records = [{k: r[k] for k in ("method", "task", "seed", "metrics")} for r in done.values()]
        status = "complete" if number == len(cells) else f"PARTIAL: {number} of {len(cells)} cells done"
        notes = (f"{status}. MNIST, the federated SmallCNN ({', '.join(args.states)}), FedSGD captures of a Flower "
                 f"simulation ({args.clients} clients, IID, one capture per client), {args.batches} target batches "
                 f"per cell (record seed = batch index), attack preset '{args.preset}' (federated/attack.py), "
                 f"adaptive attacker for clip (bound {args.clip_norm:g}) and prune; noise std 0.01; GGL/GIFD priors: "
                 "DCGAN on the 3,000 prior images ('indist') or on digits 0-4 of them ('ood', against clients whose "
                 "image is a 5-9). PSNR/SSIM on [0,1] after order matching; classifier_acc: the evaluation "
                 f"classifier ({args.classifier}) on the matched reconstructions; iters_per_s: optimizer steps "
                 "(GGL: candidate evaluations) per second, one thread; IQM and 95% CIs over target batches. "
                 + args.note)
        write_results(out, "gradient_inversion", command, records, notes=notes)
        print(f"[{number}/{len(cells)}] {task} {method} done", flush=True)
    overview_figures(runs, done, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
