"""Benchmark suites of the recommendation domain, declared for the shared runner (``harness/bench.py``).

``robust_recsys``: MF / LightGCN on Gowalla under poisoning (none, random, bandwagon, the optimized
``dl`` attack), trained without a defense (``none``, BPR), with APR and with VAT. Cells are (seed,
model, attack, defense); run folders ``<task>/<defense>-seed<seed>`` as the former script made them,
so its runs resume here. Budget ``cpu`` is the committed grid (a 3,000-user sample; MF 80 epochs with
the adversarial term from epoch 40, LightGCN 20 from 10); ``paper`` trains on all users with the
config's defaults (the official code's epochs and adversarial start, recsys/train.py).
"""

from __future__ import annotations

from typing import Any

from grp_workbench.harness.bench import BenchOptions, Cell, Suite
from grp_workbench.harness.config import build_config
from grp_workbench.harness.runs import RunDir
from grp_workbench.recsys.train import SPECS

METRICS = ("recall@20", "ndcg@20", "t_hr@50", "t_ndcg@50")
RESULT_METHOD = {"bpr": "none", "apr": "apr", "vat": "vat"}  # the results name the defense
MODELS, ATTACKS, DEFENSES = ("mf", "lightgcn"), ("none", "random", "bandwagon", "dl"), ("bpr", "apr", "vat")
BUDGETS = {  # user sample, epochs and first adversarial epoch per model
    "cpu": {"user_sample": 3000, "epochs": {"mf": 80, "lightgcn": 20}, "begin_adv": {"mf": 40, "lightgcn": 10}},
    "paper": {"user_sample": 0, "epochs": {}, "begin_adv": {}},
}


def _cells(options: BenchOptions) -> list[Cell]:
    budget = BUDGETS[options.budget]
    cells = []
    for seed in options.seeds or (0, 1, 2):  # seeds outermost: an unfinished sweep holds whole grids
        for model in MODELS:
            for attack in ATTACKS:
                for defense in DEFENSES:
                    spec = SPECS[defense]
                    values = {"seed": seed, "model": model, "attack": attack, "user_sample": budget["user_sample"],
                              "device": options.device}
                    if model in budget["epochs"]:
                        epochs = budget["epochs"][model]
                        values |= {"total_steps": epochs, "eval_every": max(epochs // 4, 1)}
                    if model in budget["begin_adv"]:
                        values["begin_adv"] = budget["begin_adv"][model]
                    config = build_config(spec.config_cls, spec.presets, "paper",
                                          {k: str(v) for k, v in values.items()})
                    cells.append(Cell(RESULT_METHOD[defense], spec.task(config), seed, spec, config,
                                      f"{spec.task(config)}/{defense}-seed{seed}"))
    return cells


def _record(cell: Cell, summary: dict[str, Any], run: RunDir) -> dict[str, float]:
    n_evals = max(len(run.read_metrics("eval")), 1)
    metrics = {m: summary["final"][m] for m in METRICS}
    metrics["epochs_per_s"] = summary["throughput"]["steps_per_s"]
    metrics["eval_seconds"] = summary["throughput"]["eval_seconds"] / n_evals
    return metrics


def _notes(options: BenchOptions) -> str:
    budget = BUDGETS[options.budget]
    return (f"Gowalla (LightGCN split), seeded sample of {budget['user_sample'] or 'all'} users (sample_seed 0); "
            f"epochs {budget['epochs'] or 'default'}, adversarial term from epoch {budget['begin_adv'] or 'default'}; "
            "evaluation "
            "on the test split every quarter of training, reported after the last epoch; 1% fake users, 5 targets "
            "from the 20% least popular items (attack_seed 0); the dl attack crafts its fakes once against a "
            "surrogate MF (cached) and every cell trains on them; defaults of recsys/README.md otherwise. Metrics: "
            "Recall/NDCG@20 over real users, T-HR/T-NDCG@50 over real users without the target; epochs_per_s and "
            "eval_seconds (one full evaluation) are throughput on this machine.")


ROBUST_RECSYS = Suite(
    name="robust_recsys",
    title="VAT (vulnerability-aware adversarial training) against poisoning: target-item hit ratio T-HR@50",
    grid=_cells, record=_record, headline="t_hr@50", notes=_notes,
)
