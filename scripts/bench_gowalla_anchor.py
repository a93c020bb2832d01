"""Sanity anchor: MF-BPR and LightGCN on the full Gowalla split, against the LightGCN paper's numbers.

The LightGCN paper (He et al., SIGIR 2020, Table 4) reports on this split Recall@20 / NDCG@20 of
0.1830 / 0.1554 for LightGCN (1000 epochs) and 0.1291 / 0.1109 for MF-BPR. Two optimizer settings
run here, each a harness run of ``workbench recsys train bpr``:

* ``vat`` -- the defaults this project trains with everywhere else (the VAT code's: AdamW with its
  default weight decay 0.01, L2 1e-4 on the batch's mean squared ego norms);
* ``lightgcn-paper`` -- the LightGCN code's optimizer: Adam without decoupled decay (weight_decay 0)
  and L2 1e-4 on half the batch's squared ego norms (our ``l2_reg`` 5e-5).

Each model is one process (``train``), so they can share a GPU; a time limit is a SIGINT
(``timeout -s INT``): the harness finishes the epoch, checkpoints and records the last evaluation,
and ``report`` says how many epochs each run reached. Rerunning ``train`` resumes.

    python scripts/bench_gowalla_anchor.py train --model lightgcn --variant vat --epochs 1000 &
    python scripts/bench_gowalla_anchor.py train --model mf --variant vat --epochs 1000 &
    wait; python scripts/bench_gowalla_anchor.py report
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from grp_workbench.harness.config import build_config
from grp_workbench.harness.report import write_results
from grp_workbench.harness.runs import RunDir
from grp_workbench.harness.trainer import train
from grp_workbench.recsys.train import SPECS

PUBLISHED = {"lightgcn": {"recall@20": 0.1830, "ndcg@20": 0.1554}, "mf": {"recall@20": 0.1291, "ndcg@20": 0.1109}}
VARIANTS = {
    "vat": {},
    "lightgcn-paper": {"weight_decay": 0.0, "l2_reg": 5e-5},
}
METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")


def run_path(runs: str, variant: str, model: str) -> Path:
    return Path(runs) / f"{variant}-{model}"


def cmd_train(args: argparse.Namespace) -> int:
    spec = SPECS["bpr"]
    overrides = {**VARIANTS[args.variant], **dict(item.split("=", 1) for item in args.overrides)}
    config = build_config(spec.config_cls, spec.presets, "paper", {
        "model": args.model, "dataset": "gowalla", "user_sample": 0, "attack": "none",
        "seed": args.seed, "total_steps": args.epochs, "eval_every": args.eval_every,
        "checkpoint_every": args.eval_every, "log_every": 10, **overrides})
    summary = train(spec, config, str(run_path(args.runs, args.variant, args.model)), "paper",
                    if_exists="resume-or-start", quiet=True)
    final = summary["final"]
    print(f"{args.variant} {args.model}: {summary['status']} at epoch {summary['step']}, "
          f"recall@20 {final['recall@20']:.4f} ndcg@20 {final['ndcg@20']:.4f}", flush=True)
    return 0


def curves_figure(runs: list[tuple[str, str, RunDir]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, model in zip(axes, ("mf", "lightgcn")):
        for variant, run_model, run in runs:
            if run_model != model:
                continue
            rows = run.read_metrics("eval")
            ax.plot([r["step"] for r in rows], [r["recall@20"] for r in rows], marker=".", label=variant)
        ax.axhline(PUBLISHED[model]["recall@20"], color="k", linestyle="--", linewidth=1, label="published")
        ax.set_title(f"Gowalla, {'MF-BPR' if model == 'mf' else 'LightGCN'}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test Recall@20")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_report(args: argparse.Namespace) -> int:
    found = [(variant, model, RunDir(run_path(args.runs, variant, model)))
             for variant in VARIANTS for model in ("mf", "lightgcn")]
    found = [(v, m, run) for v, m, run in found if run.exists() and run.summary]
    if not found:
        raise SystemExit(f"no finished or interrupted runs under {args.runs}; run the train command first")
    records, rows = [], []
    for variant, model, run in found:
        summary = run.summary
        final, best, throughput = summary["final"], summary["best"], summary["throughput"]
        n_evals = max(len(run.read_metrics("eval")), 1)
        metrics = {m: final[m] for m in METRICS}
        metrics |= {"best_recall@20": best["recall@20"], "epochs": summary["step"],
                    "epochs_per_s": throughput["steps_per_s"], "eval_seconds": throughput["eval_seconds"] / n_evals}
        records.append({"method": f"bpr-{variant}", "task": f"gowalla-{model}", "seed": summary["seed"],
                        "metrics": metrics})
        published = PUBLISHED[model]
        rows.append(f"| {model} | {variant} | {summary['step']} ({summary['status']}) | {final['recall@20']:.4f} | "
                    f"{final['ndcg@20']:.4f} | {best['recall@20']:.4f} (epoch {best['step']}) | "
                    f"{published['recall@20']:.4f} / {published['ndcg@20']:.4f} | "
                    f"{final['recall@20'] / published['recall@20']:.1%} | {throughput['steps_per_s']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves_figure(found, out / "curves.png")
    device = found[0][2].summary.get("device", {})
    table = "\n".join([
        "| model | optimizer | epochs (status) | Recall@20 | NDCG@20 | best Recall@20 | published R@20 / N@20 | "
        "ours / published | epochs/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows])
    extra = (f"## Against the LightGCN paper\n\nDevice: {device.get('device')} {device.get('gpu', '')}.\n\n{table}\n\n"
             "![Recall@20 per epoch](curves.png)\n")
    notes = (f"{args.status}Full Gowalla, LightGCN split (29,858 users, 40,981 items, 810,128 training and "
             "217,242 test interactions), BPR without attack or defense, seed 0, evaluation on the test split "
             "over all users with training items masked; metrics after the last epoch reached "
             "(runs stopped by a time limit say 'interrupted' and report their last evaluation). "
             "Published: LightGCN paper Table 4 (LightGCN 1000 epochs; MF-BPR).")
    command = "python scripts/bench_gowalla_anchor.py " + shlex.join(sys.argv[1:])
    write_results(out, "gowalla_anchor", command, records, notes=notes, extra_markdown=extra)
    print((out / "README.md").read_text())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one model (resumes an existing run)")
    p_train.add_argument("--model", choices=("mf", "lightgcn"), required=True)
    p_train.add_argument("--variant", choices=tuple(VARIANTS), default="vat")
    p_train.add_argument("--epochs", type=int, default=1000)
    p_train.add_argument("--eval-every", type=int, default=20)
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra config overrides key=value")
    p_report = sub.add_parser("report", help="write results.json, README.md and curves.png from the runs")
    p_report.add_argument("--out", default="benchmarks/gowalla_anchor")
    p_report.add_argument("--status", default="", help="a label put first in the notes (e.g. 'PARTIAL: ...')")
    for p in (p_train, p_report):
        p.add_argument("--runs", default="runs/bench/gowalla_anchor")
    args = parser.parse_args()
    return cmd_train(args) if args.command == "train" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
