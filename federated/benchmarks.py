"""Benchmark suites of the federated domain, declared for the shared runner (``harness/bench.py``).

``mnist_classifier``: the small CNN on MNIST (stratified 8,000 / 2,000 split of the 10k test images),
the federated task model and the evaluation classifier of generated images. Acceptance target of
the foundation issue: >= 98% held-out accuracy in a few CPU minutes. ``workbench bench
mnist_classifier`` (budget ``cpu``: the quick preset, seeds 0 1 2; ``paper``: the paper preset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grp_workbench.federated.classifier import SPEC as CLASSIFIER
from grp_workbench.harness.bench import BenchOptions, Cell, Suite
from grp_workbench.harness.config import build_config
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


MNIST_CLASSIFIER = Suite(
    name="mnist_classifier",
    title="The federated task model: a small CNN on MNIST (held-out accuracy)",
    grid=_classifier_cells, record=_classifier_record, headline="accuracy_last", notes=_classifier_notes,
    extra_markdown=_classifier_curves, record_device=True,
)
