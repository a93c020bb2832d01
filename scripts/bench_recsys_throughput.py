"""Throughput: our LightGCN / MF epochs and full-ranking evaluation beside RecBole's LightGCN, same split.

Both train BPR with one uniform negative per training interaction per epoch (an epoch = one pass
over the training interactions), batch 2048, embedding 64, 3 layers, and evaluate Recall/NDCG@20
over all items for every test user with training items masked. RecBole runs in its own virtual
environment (its ray pin conflicts with Flower's, and RecBole 1.2.1 still uses ``np.float_``, gone in
NumPy 2, and scipy sparse internals removed after 1.10), in a child process with the same torch thread
count, right after ours on the same machine:

    python -m venv .venv-recbole
    .venv-recbole/bin/pip install torch==2.13.0 recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy==1.10.1"
    python scripts/bench_recsys_throughput.py --recbole-python .venv-recbole/bin/python --user-sample 3000

Each timing is the median over ``--epochs`` epochs (after one warm-up epoch) and ``--evals``
evaluations; the records go to benchmarks/recsys_throughput/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from grp_workbench.harness.config import build_config
from grp_workbench.harness.device import make_policy
from grp_workbench.harness.report import write_results
from grp_workbench.recsys.train import SPECS

RECBOLE_CHILD = textwrap.dedent("""
    import json, sys, time, logging
    import numpy as np, torch
    torch.set_num_threads(int(sys.argv[3]))
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed
    epochs, evals = int(sys.argv[2]), int(sys.argv[4])
    config = Config(model="LightGCN", dataset="split", config_dict={
        "data_path": sys.argv[1], "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]}, "embedding_size": 64, "n_layers": 3, "reg_weight": 1e-4,
        "train_batch_size": 2048, "eval_batch_size": 409600, "learning_rate": 1e-3, "epochs": epochs,
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full"}, "metrics": ["Recall", "NDCG"],
        "topk": [20], "valid_metric": "Recall@20", "device": "cpu", "use_gpu": False, "show_progress": False,
        "worker": 0, "checkpoint_dir": sys.argv[1] + "/saved", "state": "ERROR", "seed": 0})
    logging.disable(logging.CRITICAL)
    init_seed(0, True)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = LightGCN(config, train_data.dataset).to("cpu")
    trainer = Trainer(config, model)
    epoch_seconds = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch_idx=epoch, show_progress=False)
        epoch_seconds.append(time.perf_counter() - start)
    eval_seconds, result = [], None
    for _ in range(evals):
        start = time.perf_counter()
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        eval_seconds.append(time.perf_counter() - start)
    print(json.dumps({"epoch_seconds": epoch_seconds[1:], "eval_seconds": eval_seconds,
                      "recall@20": float(result["recall@20"]), "n_users": dataset.user_num - 1,
                      "n_items": dataset.item_num - 1, "n_train": len(train_data.dataset)}))
""")


def ours(model: str, user_sample: int, epochs: int, evals: int) -> dict:
    spec = SPECS["bpr"]
    config = build_config(spec.config_cls, spec.presets, "paper", {"model": model, "user_sample": user_sample})
    algorithm = spec.build(config, make_policy("cpu", "fp32"))
    epoch_seconds = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        algorithm.update()
        epoch_seconds.append(time.perf_counter() - start)
    eval_seconds, metrics = [], {}
    for _ in range(evals):
        start = time.perf_counter()
        metrics = algorithm.evaluate()
        eval_seconds.append(time.perf_counter() - start)
    return {"epoch_seconds": epoch_seconds[1:], "eval_seconds": eval_seconds, "recall@20": metrics["recall@20"],
            "data": algorithm.data}


def write_atomic_files(data, folder: Path) -> None:
    """The same split as RecBole benchmark files (test doubles as validation; only test is timed)."""
    target = folder / "split"
    target.mkdir(parents=True)
    for suffix, matrix in (("train", data.train), ("valid", data.test), ("test", data.test)):
        coo = matrix.tocoo()
        lines = ["user_id:token\titem_id:token"] + [f"u{u}\ti{i}" for u, i in zip(coo.row, coo.col)]
        (target / f"split.{suffix}.inter").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recbole-python", help="python of a venv with recbole; omitted: ours only")
    parser.add_argument("--user-sample", type=int, default=3000, help="0 = all of Gowalla")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--evals", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/recsys_throughput")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    task = "gowalla" + (f"-u{args.user_sample}" if args.user_sample else "")
    records, notes = [], []
    data = None
    for model in ("mf", "lightgcn"):
        result = ours(model, args.user_sample, args.epochs, args.evals)
        data = result.pop("data")
        records.append({"method": f"workbench-{model}", "task": task, "seed": 0, "metrics": {
            "epochs_per_s": 1 / float(np.median(result["epoch_seconds"])),
            "eval_seconds": float(np.median(result["eval_seconds"])), "recall@20_after_epochs": result["recall@20"]}})
        print(f"workbench {model}: {json.dumps(records[-1]['metrics'])}", flush=True)
    if args.recbole_python:
        with tempfile.TemporaryDirectory() as tmp:
            write_atomic_files(data, Path(tmp))
            child = subprocess.run([args.recbole_python, "-c", RECBOLE_CHILD, tmp, str(args.epochs), str(threads),
                                    str(args.evals)], capture_output=True, text=True)
        if child.returncode != 0:
            last_line = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else f"exit {child.returncode}"
            notes.append(f"RecBole failed: {last_line}")
            print(child.stderr[-3000:], file=sys.stderr)
        else:
            result = json.loads(child.stdout.strip().splitlines()[-1])
            records.append({"method": "recbole-lightgcn", "task": task, "seed": 0, "metrics": {
                "epochs_per_s": 1 / float(np.median(result["epoch_seconds"])),
                "eval_seconds": float(np.median(result["eval_seconds"])),
                "recall@20_after_epochs": result["recall@20"]}})
            notes.append(f"RecBole saw {result['n_users']} users, {result['n_items']} items, "
                         f"{result['n_train']} training interactions.")
            print(f"recbole lightgcn: {json.dumps(records[-1]['metrics'])}", flush=True)
    else:
        notes.append("RecBole not run (no --recbole-python).")
    command = "python scripts/bench_recsys_throughput.py " + shlex.join(sys.argv[1:])
    summary = (f"{task}: {data.n_users} users, {data.n_items} items, {data.n_train} training interactions; "
               f"median of {args.epochs} epochs after one warm-up and of {args.evals} full evaluations; "
               f"{threads} torch threads; recall@20_after_epochs is after {args.epochs + 1} epochs (a sanity "
               "check that both trained the same model, not an accuracy claim). " + " ".join(notes))
    write_results(args.out, "recsys_throughput", command, records, notes=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
