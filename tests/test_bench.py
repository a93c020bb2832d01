"""The benchmark runner: one declared grid, the same records under every executor, resumable cells."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from grp_workbench.harness.bench import BenchOptions, Cell, Suite, load_suite, plan, run_cell, run_suite  # noqa: F401
from grp_workbench.harness.config import build_config
from grp_workbench.harness.errors import HarnessError
from grp_workbench.harness.runs import RunDir
from tests.conftest import TOY_PRESETS, TOY_SPEC, ToyConfig, ToyRegression, metric_rows

REPO = Path(__file__).resolve().parents[1]


def _grid(options: BenchOptions) -> list[Cell]:
    cells = []
    for method, lr in (("sgd-fast", 0.05), ("sgd-slow", 0.01)):
        for task, steps in (("short", 20), ("long", 30)):
            for seed in options.seeds or (0, 1):
                config = build_config(ToyConfig, TOY_PRESETS, "paper", {
                    "lr": str(lr), "total_steps": str(steps), "seed": str(seed), "deterministic": "true"})
                cells.append(Cell(method, task, seed, TOY_SPEC, config, f"{task}/{method}-seed{seed}"))
    return cells


TOY_SUITE = Suite(name="toy", title="Toy regression (two step sizes, two lengths)", grid=_grid,
                  record=lambda cell, summary, run: {"neg_mse": summary["final"]["neg_mse"]}, headline="neg_mse",
                  claims=("the larger step size fits better in a short run.",))
REF = "tests.test_bench:TOY_SUITE"


def _options(tmp_path, name, **kwargs) -> BenchOptions:
    return BenchOptions(runs=str(tmp_path / name / "runs"), out=str(tmp_path / name / "out"), **kwargs)


def _records(options: BenchOptions) -> list[tuple]:
    results = json.loads((Path(options.out) / "results.json").read_text())
    return sorted((r["method"], r["task"], r["seed"], round(r["metrics"]["neg_mse"], 10)) for r in results["records"])


def test_every_executor_gives_the_same_records(tmp_path):
    local = _options(tmp_path, "local")
    after = run_suite(REF, local)
    assert len(after.done) == 8 and not after.todo
    readme = (Path(local.out) / "README.md").read_text()
    assert "Status: complete." in readme
    assert readme.count("(n=2)") == 4 and "| method | short | long |" in readme
    workers = _options(tmp_path, "workers")
    run_suite(REF, workers, executor="workers", workers=2)
    ray_options = _options(tmp_path, "ray")
    run_suite(REF, ray_options, executor="ray")
    assert _records(local) == _records(workers) == _records(ray_options)


def test_a_failed_interim_report_does_not_stop_the_workers(tmp_path, monkeypatch, capfd):
    import grp_workbench.harness.bench as bench

    calls, write = [], bench.write_suite_results

    def fails_first(*args):  # as a runner's report failed on a results.json another version wrote
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("unhashable type: 'dict'")
        return write(*args)

    monkeypatch.setattr(bench, "write_suite_results", fails_first)
    options = _options(tmp_path, "interim")
    after = run_suite(REF, options, executor="workers", workers=2)
    assert len(after.done) == 8 and not after.todo and len(calls) > 1
    assert "Status: complete." in (Path(options.out) / "README.md").read_text()
    assert "rewriting toy's results after a cell finished failed" in capfd.readouterr().err


class SlowToyRegression(ToyRegression):
    def update(self):
        time.sleep(0.05)
        return super().update()


def _slow_grid(options: BenchOptions) -> list[Cell]:
    spec = replace(TOY_SPEC, build=SlowToyRegression)
    return [Cell("sgd", "endless", seed, spec, build_config(ToyConfig, TOY_PRESETS, "paper", {
        "total_steps": "100000", "checkpoint_every": "5", "seed": str(seed)}), f"endless/sgd-seed{seed}")
        for seed in options.seeds or (0, 1)]


SLOW_TOY_SUITE = Suite(name="slow_toy", title="Toy regression that never ends in a test", grid=_slow_grid,
                       record=lambda cell, summary, run: {"neg_mse": summary["final"]["neg_mse"]}, headline="neg_mse")


def test_stopping_the_workers_runner_stops_its_workers_at_a_checkpoint(tmp_path):
    """`kill <runner>` (SIGTERM to the runner alone, not its group as Ctrl-C is) left its workers
    training unwatched; they must stop after their step, each with its checkpoint, and the runner exit."""
    options = _options(tmp_path, "slow")
    script = ("import sys; from grp_workbench.harness.bench import run_suite, _decode\n"
              "run_suite('tests.test_bench:SLOW_TOY_SUITE', _decode(sys.argv[1]), executor='workers', workers=2)\n")
    from grp_workbench.harness.bench import _encode

    runner = subprocess.Popen([sys.executable, "-c", script, _encode(options)], cwd=REPO, stderr=subprocess.PIPE,
                              text=True)
    runs = [RunDir(Path(options.runs) / "endless" / f"sgd-seed{seed}") for seed in (0, 1)]
    try:
        deadline = time.time() + 120
        while not all(run.latest_checkpoint() for run in runs):
            assert runner.poll() is None and time.time() < deadline, runner.communicate()
            time.sleep(0.1)
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    finally:  # a failure must not leave endless workers behind
        leftover = subprocess.run(["pgrep", "-f", options.runs], capture_output=True, text=True).stdout.split()
        subprocess.run(["pkill", "-9", "-f", options.runs])
        runner.kill()
    assert not leftover, f"workers still running after the runner stopped: {leftover}"
    assert runner.returncode != 0
    for run in runs:
        summary = run.summary
        assert summary["status"] == "interrupted", err
        assert run.latest_checkpoint().stem.endswith(f"{summary['step']:012d}")  # stopped at its checkpoint


def test_workers_take_the_callers_thread_count_else_share_the_cores(monkeypatch):
    from grp_workbench.harness.bench import worker_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert worker_threads(4, {}) == 4
    assert worker_threads(32, {}) == 1
    assert worker_threads(4, {"OMP_NUM_THREADS": "1"}) == 1  # one invocation beside another benchmark
    assert worker_threads(2, {"OMP_NUM_THREADS": ""}) == 8
    with pytest.raises(HarnessError, match="OMP_NUM_THREADS='two': a whole number"):
        worker_threads(2, {"OMP_NUM_THREADS": "two"})


def test_a_killed_cell_resumes_under_ray_and_an_interrupted_suite_skips_finished_cells(tmp_path):
    import ray

    options = _options(tmp_path, "suite")
    run_suite(REF, replace(options, methods=("sgd-fast",)))  # a first, partial run of the grid
    first = {c.run: RunDir(Path(options.runs) / c.run).summary["finished"] for c in plan(TOY_SUITE, options).done}
    assert len(first) == 4
    readme = (Path(options.out) / "README.md").read_text()
    assert "PARTIAL (4 of 8 cells)" in readme
    # one cell killed mid-run (kill -9 of the process training it)
    killed = Path(options.runs) / "long" / "sgd-slow-seed0"
    script = ("import sys; from tests.test_bench import TOY_SUITE, BenchOptions, run_cell\n"
              "import time; from tests.conftest import ToyRegression\n"
              "update = ToyRegression.update\n"
              "ToyRegression.update = lambda self: (time.sleep(0.1), update(self))[1]\n"
              "options = BenchOptions(runs=sys.argv[1])\n"
              "cell = [c for c in TOY_SUITE.cells(options) if c.run == 'long/sgd-slow-seed0'][0]\n"
              "run_cell(TOY_SUITE, options, cell)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, options.runs], cwd=REPO)
    while not (RunDir(killed).latest_checkpoint() and RunDir(killed).latest_checkpoint().name >= "step_000000000010"):
        assert proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [c.run for c in [plan(TOY_SUITE, options).cells[i] for i in plan(TOY_SUITE, options).todo]] == [
        "short/sgd-slow-seed0", "short/sgd-slow-seed1", "long/sgd-slow-seed0", "long/sgd-slow-seed1"]
    run_suite(REF, options, executor="ray")
    ray.shutdown()
    assert {run: RunDir(Path(options.runs) / run).summary["finished"] for run in first} == first  # not recomputed
    resumed = RunDir(killed).summary
    assert resumed["status"] == "finished" and resumed["resumed_from"] and resumed["resumed_from"][0] >= 10
    fresh = _options(tmp_path, "fresh")
    run_suite(REF, replace(fresh, methods=("sgd-slow",), tasks=("long",), seeds=(0,)))
    assert metric_rows(killed) == metric_rows(Path(fresh.runs) / "long" / "sgd-slow-seed0")  # no row twice


def test_unknown_suite_method_or_task_is_one_error_naming_the_valid_ones(tmp_path):
    with pytest.raises(HarnessError, match="unknown benchmark suite 'nope'; the suites are: .*mnist_classifier"):
        load_suite("nope")
    with pytest.raises(HarnessError, match="unknown method\\(s\\) adam; choose from sgd-fast, sgd-slow"):
        TOY_SUITE.cells(BenchOptions(methods=("adam",)))
    with pytest.raises(HarnessError, match="unknown task\\(s\\) medium; choose from long, short"):
        TOY_SUITE.cells(BenchOptions(tasks=("medium",)))


def test_committed_results_name_no_path_of_a_machine():
    offenders = []
    for path in sorted((REPO / "benchmarks").rglob("*")):
        if path.suffix in (".json", ".md") and path.is_file():
            text = path.read_text()
            for root in ("/work/", "/root/", "/tmp/", "/home/", "/Users/"):
                if root in text:
                    offenders.append(f"{path.relative_to(REPO)} ({root})")
    assert not offenders, offenders


def test_committed_results_recompute_to_their_own_summaries(tmp_path):
    """Every committed results.json: its records, summarized by today's code, give the committed summary,
    so porting a suite to the runner (which renders through the same code) changes no number."""
    from grp_workbench.harness.report import write_results

    for path in sorted((REPO / "benchmarks").glob("*/results.json")):
        committed = json.loads(path.read_text())
        out = write_results(tmp_path / path.parent.name, committed["suite"], committed["command"],
                            committed["records"], notes=committed.get("notes", ""))
        again = json.loads(out.read_text())
        assert again["records"] == committed["records"], path
        key = lambda row: (row["method"], row["task"], row["metric"])  # noqa: E731
        for new, old in zip(sorted(again["summary"], key=key), sorted(committed["summary"], key=key), strict=True):
            assert key(new) == key(old) and new["n"] == old["n"], path
            assert new["iqm"] == pytest.approx(old["iqm"], rel=1e-9, abs=1e-12), (path, key(old))
            assert new["ci95"] == pytest.approx(old["ci95"], rel=1e-9, abs=1e-12), (path, key(old))


def test_cli_lists_suites_and_dry_runs_a_grid(tmp_path):
    command = [sys.executable, "-m", "grp_workbench.harness.cli", "bench"]
    listed = subprocess.run([*command, "--list"], capture_output=True, text=True)
    assert "mnist_classifier" in listed.stdout.split()
    dry = subprocess.run([*command, "mnist_classifier", "--dry-run", "--seeds", "3,4", "--runs", str(tmp_path)],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == f"mnist_classifier: 2 cell(s), 0 done, 2 to run (run root {tmp_path})"
    assert "to run: small_cnn mnist-holdout2k seed 4 -> quick/seed4 (cost unknown)" in dry.stdout
    bad = subprocess.run([*command, "mnist_classifier", "--dry-run", "--tasks", "cifar"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown task(s) cifar; choose from mnist-holdout2k" in bad.stderr


def _committed_folders() -> list[tuple[str, str]]:
    """(suite, results folder) of every committed results.json."""
    folders = []
    for path in sorted((REPO / "benchmarks").glob("*/results.json")):
        folders.append((json.loads(path.read_text())["suite"], path.parent.name))
    return folders


def test_every_committed_benchmark_is_a_suite_of_the_runner():
    from grp_workbench.harness.bench import suite_names

    assert {suite for suite, _ in _committed_folders()} <= set(suite_names())
    assert not list((REPO / "scripts").glob("bench_*.py"))  # the former per-suite scripts are gone


@pytest.mark.parametrize("suite_name,folder", _committed_folders())
def test_a_suite_declares_exactly_its_committed_grid_and_regenerates_its_records(suite_name, folder, tmp_path):
    """The runner's grid names the same (method, task, seed) records as the committed results, and
    rewriting the results with none of the runs on this machine (every record carried over from the
    committed results.json) gives the same records: porting a suite changed no number."""
    from grp_workbench.harness.bench import write_suite_results

    suite = load_suite(suite_name)
    committed = json.loads((REPO / "benchmarks" / folder / "results.json").read_text())
    declared = [key for cell in suite.cells(BenchOptions()) for key in cell.keys()]
    # every committed record is a cell of the grid (a grid may have grown by cells not run yet)
    assert {(r["method"], r["task"], r["seed"]) for r in committed["records"]} <= set(declared)
    assert len(declared) == len(set(declared)) >= len(committed["records"])
    assert suite.cells(BenchOptions(budget="paper"))  # the paper budget builds too
    out = tmp_path / folder
    out.mkdir()
    (out / "results.json").write_text(json.dumps(committed))
    options = BenchOptions(runs=str(tmp_path / "no-runs"), out=str(out))
    write_suite_results(suite, options, f"workbench bench {suite_name}")
    again = json.loads((out / "results.json").read_text())
    key = lambda record: (record["method"], record["task"], record["seed"])  # noqa: E731
    assert sorted(again["records"], key=key) == sorted(committed["records"], key=key)
    assert again["machine"] == committed["machine"]  # measured there, not on the machine that rewrote it
    readme = (out / "README.md").read_text()
    complete = len(committed["records"]) == len(declared)
    assert ("Status: complete." in readme) == complete and "carried over from the previous results.json" in readme
    assert complete or "PARTIAL" in committed["notes"]  # a committed partial grid says so


def test_a_batched_seed_cell_makes_one_record_per_member(tmp_path):
    def grid(options):
        config = build_config(ToyConfig, TOY_PRESETS, "paper", {"total_steps": "20", "seed": "4"})
        return [Cell("sgd", "short", 4, TOY_SPEC, config, "short/sgd-seeds4-5", members=(4, 5))]

    def per_member(cell, summary, run):  # as a batched run reports normalized_score/seed<k>
        return {seed: {"neg_mse": summary["final"]["neg_mse"] - seed} for seed in cell.members}

    suite = Suite(name="batched", title="Batched seeds", grid=grid, record=per_member, headline="neg_mse")
    options = _options(tmp_path, "batched")
    from grp_workbench.harness.bench import write_suite_results

    run_cell(suite, options, suite.cells(options)[0])
    results = json.loads(write_suite_results(suite, options, "test").read_text())
    assert [(r["seed"], r["task"]) for r in results["records"]] == [(4, "short"), (5, "short")]
    assert results["records"][0]["metrics"]["neg_mse"] - results["records"][1]["metrics"]["neg_mse"] == 1.0
    assert "(n=2)" in (Path(options.out) / "README.md").read_text()


def _seed_run_grid(options):
    from grp_workbench.harness.bench import seed_runs

    cells = []
    for seeds in seed_runs(options, (0, 1, 2)):
        config = build_config(ToyConfig, TOY_PRESETS, "paper", {"total_steps": "20", "seed": str(seeds[0])})
        cells.append(Cell("sgd", "short", seeds[0], TOY_SPEC, config, f"short/sgd-seeds{seeds[0]}-{seeds[-1]}",
                          members=seeds))
    return cells


SEED_RUN_SUITE = Suite(name="seedruns", title="Seeds grouped into runs", grid=_seed_run_grid, headline="neg_mse",
                       record=lambda cell, summary, run: {s: {"neg_mse": float(s)} for s in cell.members})


def test_seeds_trained_one_run_each_fill_the_budgets_grid_and_keep_each_others_records(tmp_path):
    ref = "tests.test_bench:SEED_RUN_SUITE"
    options = _options(tmp_path, "seedruns", seeds_per_run=1)
    assert [c.members for c in SEED_RUN_SUITE.cells(options)] == [(0,), (1,), (2,)]
    assert [c.members for c in SEED_RUN_SUITE.cells(replace(options, seeds_per_run=2))] == [(0, 1), (2,)]
    with pytest.raises(HarnessError, match="--seeds-per-run 1"):
        SEED_RUN_SUITE.cells(replace(options, seeds=(0, 2), seeds_per_run=None))
    run_suite(ref, replace(options, seeds=(0,)))
    assert "PARTIAL (0 of 1 cells)" in (Path(options.out) / "README.md").read_text()
    # a later invocation for the other seeds keeps seed 0's record, and the budget's grid is then complete
    run_suite(ref, replace(options, seeds=(2, 1)))
    assert [r[2] for r in _records(options)] == [0, 1, 2]
    assert "Status: complete." in (Path(options.out) / "README.md").read_text()
    # a rewrite asking for seed 1 alone (its run is here) still keeps seeds 0 and 2, whose runs are too
    from grp_workbench.harness.bench import write_suite_results

    write_suite_results(SEED_RUN_SUITE, replace(options, seeds=(1,)), "test")
    assert [r[2] for r in _records(options)] == [0, 1, 2]
    # a report of the default grouping (all three batched, a run that does not exist) finds the seeds'
    # own runs, even when no results.json holds their records (a runner stopped before writing it)
    (Path(options.out) / "results.json").unlink()
    write_suite_results(SEED_RUN_SUITE, replace(options, seeds_per_run=None), "test")
    assert [r[2] for r in _records(options)] == [0, 1, 2]
    assert "Status: complete." in (Path(options.out) / "README.md").read_text()


def test_evaluation_histories_outlive_the_runs_and_merge_seeds_trained_apart(tmp_path):
    import shutil

    from grp_workbench.harness.bench import HISTORY_FILE, eval_histories
    from grp_workbench.rl.benchmarks import merged_curves

    options = _options(tmp_path, "histories", seeds_per_run=1)
    run_suite("tests.test_bench:SEED_RUN_SUITE", options)
    cells = SEED_RUN_SUITE.cells(options)
    kept = eval_histories(SEED_RUN_SUITE, options, cells, lambda key: key == "neg_mse")
    assert sorted(kept) == [c.run for c in cells] and all(h["rows"] and "neg_mse" in h["rows"][-1]
                                                          for h in kept.values())
    shutil.rmtree(options.runs)  # a fresh checkout: only the results folder is left
    assert eval_histories(SEED_RUN_SUITE, options, cells, lambda key: key == "neg_mse") == kept
    assert (Path(options.out) / HISTORY_FILE).is_file()
    histories = [{"method": "a2pr", "task": "t", "seeds": [seed], "rows": [
        {"step": step, "normalized_score": float(step + seed)} for step in (5, 10)]} for seed in (0, 1)]
    histories.append({"method": "a2pr", "task": "t", "seeds": [2], "rows": [{"step": 5, "normalized_score": 1.0}]})
    steps, scores = merged_curves(histories)[("a2pr", "t")]
    assert steps.tolist() == [5, 10] and scores.tolist() == [[5.0, 10.0], [6.0, 11.0]]


def test_offline_rl_cells_record_each_batched_seed_and_state_the_claims_direction(tmp_path):
    from grp_workbench.envs.datasets import build
    from grp_workbench.rl.benchmarks import OFFLINE_RL, _medium_replay_claim, _offline_record

    build("pointreach-medium", n_steps=300)
    cell = OFFLINE_RL.cells(BenchOptions(seeds=(3, 4)))[0]
    config = replace(cell.config, dataset="pointreach-medium", total_steps=10, eval_every=5, checkpoint_every=5,
                     hidden=32, batch_size=32, eval_episodes=1)
    cell = replace(cell, config=config, task="pointreach-medium")
    run_cell(OFFLINE_RL, BenchOptions(runs=str(tmp_path)), cell)
    run = RunDir(tmp_path / cell.run)
    per_seed = _offline_record(cell, run.summary, run)
    assert sorted(per_seed) == [3, 4]
    assert per_seed[3]["normalized_score_last"] == run.read_metrics("eval")[-1]["normalized_score/seed3"]
    records = [{"method": m, "task": "hopper-medium-replay", "seed": s, "metrics": {"normalized_score_last": v + s}}
               for m, v in (("a2pr", 20.0), ("td3bc", 10.0)) for s in range(3)]
    claim = _medium_replay_claim(records)
    assert "at 10k steps the measured direction agrees" in claim
    assert "A2PR vs TD3+BC: hopper-medium-replay 21.0 vs 11.0 (A2PR ahead)" in claim


def test_the_longer_budget_claim_says_when_one_seed_carries_the_lead():
    from grp_workbench.rl.benchmarks import _long_budget_claim

    def records(a2pr, td3bc):
        return [{"method": m, "task": "hopper-medium-replay-100k", "seed": s, "metrics": {"normalized_score_lastk": v}}
                for m, values in (("a2pr", a2pr), ("td3bc", td3bc)) for s, v in enumerate(values)]

    lucky = _long_budget_claim(records([20.9, 26.6, 56.8], [24.1, 29.2, 26.8]))  # the measured cell
    assert "hopper-medium-replay-100k 34.8 [20.9, 56.8] (n=3) vs 26.7" in lucky
    assert "A2PR ahead, the 95% CIs overlap" in lucky
    clear = _long_budget_claim(records([40.0, 41.0, 42.0], [24.0, 25.0, 26.0]))
    assert "A2PR ahead." in clear and "overlap" not in clear


def test_combined_report_labels_a_suite_with_records_missing_partial(tmp_path, monkeypatch):
    import shutil

    from grp_workbench.harness.bench import write_combined_report

    shutil.copytree(REPO / "benchmarks" / "offline_rl", tmp_path / "benchmarks" / "offline_rl")
    results_file = tmp_path / "benchmarks" / "offline_rl" / "results.json"
    results = json.loads(results_file.read_text())
    kept = results["records"][: len(results["records"]) // 2]  # half the records lost
    results_file.write_text(json.dumps({**results, "records": kept}))
    monkeypatch.chdir(tmp_path)
    text = write_combined_report(BenchOptions(), tmp_path / "all").read_text()
    assert f"Suite `offline_rl`, partial ({len(kept)} of " in text


def test_combined_report_has_a_section_per_suite_from_its_results(tmp_path, monkeypatch):
    from grp_workbench.harness.bench import suite_names, write_combined_report

    monkeypatch.chdir(REPO)  # suites read benchmarks/<suite>/results.json relative to the checkout
    text = write_combined_report(BenchOptions(), tmp_path / "all").read_text()
    for name in suite_names():
        suite = load_suite(name)
        committed = (suite.out_dir(BenchOptions()) / "results.json").is_file()
        assert f"## {suite.title}" in text
        assert (f"Suite `{name}`, " if committed else f"No results yet: `workbench bench {name}`.") in text
    assert "Suite `mnist_classifier`, complete" in text and "Suite `offline_rl`, complete" in text
    assert "| small_cnn | 0.9887 [0.9865, 0.99] (n=3) |" in text
    assert "A2PR >= TD3+BC, largest gains on medium-replay (paper, 1M steps): at 10k steps the measured" in text


def test_rewriting_results_keeps_the_records_of_cells_run_elsewhere(tmp_path):
    import shutil

    from grp_workbench.harness.bench import write_suite_results
    from grp_workbench.harness.runs import git_commit

    options = _options(tmp_path, "kept")
    run_suite(REF, options)
    before = _records(options)
    shutil.rmtree(Path(options.runs) / "long" / "sgd-slow-seed1")  # as on a machine that never ran this cell
    write_suite_results(TOY_SUITE, options, "test")
    assert _records(options) == before
    readme = (Path(options.out) / "README.md").read_text()
    assert "Status: complete." in readme
    assert "1 of the 8 cells are carried over from the previous results.json" in readme
    # a carried record keeps where it was measured through any number of rewrites, not the rewrite's commit
    first = json.loads((Path(options.out) / "results.json").read_text())
    assert first["records_from"] and first["measured_here"] is True  # 7 cells measured here, 1 carried
    # a later rewrite that only carried records over (measured nothing) is not where any record came from
    (Path(options.out) / "results.json").write_text(json.dumps({**first, "git_commit": "rewrite", "date": "later",
                                                                "measured_here": False}))
    write_suite_results(TOY_SUITE, options, "test")
    again = json.loads((Path(options.out) / "results.json").read_text())
    assert again["records_from"] == first["records_from"] and again["measured_here"] is True
    assert "rewrite" not in (Path(options.out) / "README.md").read_text()
    # report-only rewrites with runs on this machine (measured_here) name no new origin either
    write_suite_results(TOY_SUITE, options, "test")
    write_suite_results(TOY_SUITE, options, "test")
    assert json.loads((Path(options.out) / "results.json").read_text())["records_from"] == first["records_from"]
    # every record has the commit its run was created at; the carried one keeps its own
    assert sum(seeds for o in first["records_from"] for seeds in map(len, o["cells"].values())) == len(before)
    assert [o["git_commit"] for o in first["records_from"]] == [git_commit()]  # one entry per commit


def test_results_written_before_records_from_named_cells_stop_growing(tmp_path):
    import shutil

    from grp_workbench.harness.bench import write_suite_results

    options = _options(tmp_path, "legacy")
    run_suite(REF, options)
    shutil.rmtree(Path(options.runs) / "long" / "sgd-slow-seed1")
    results = Path(options.out) / "results.json"
    # the old format: commits only, the same commit once per rewrite, the last write measured records
    legacy = [{"git_commit": "aaa", "date": "2026-01-01"}, {"git_commit": "bbb", "date": "2026-01-02"},
              {"git_commit": "bbb", "date": "2026-01-03"}]
    results.write_text(json.dumps({**json.loads(results.read_text()), "git_commit": "ccc", "date": "2026-01-04",
                                   "records_from": legacy, "measured_here": True}))
    write_suite_results(TOY_SUITE, options, "test")
    first = json.loads(results.read_text())["records_from"]
    guessed = [o for o in first if "one_of" in o]
    assert len(guessed) == 1 and guessed[0]["cells"] == {"sgd-slow/long": [1]}
    assert [o["git_commit"] for o in guessed[0]["one_of"]] == ["aaa", "bbb", "ccc"]
    assert "one of commits aaa (2026-01-01), bbb (2026-01-03), ccc (2026-01-04)" in (
        Path(options.out) / "README.md").read_text()
    for _ in range(2):
        write_suite_results(TOY_SUITE, options, "test")
        assert json.loads(results.read_text())["records_from"] == first


def _measure_toy(cell, folder):
    """A measured cell: two 'implementations' timed side by side make one record each."""
    (folder / "measured.txt").write_text(str(cell.config))
    return {key: {"value": cell.config["scale"] * (1 + index) + cell.seed} for index, key in enumerate(cell.outputs)}


PREPARED = []


def _measured_grid(options):
    scale = 2 if options.budget == "paper" else 1
    return [Cell("ours", task, seed, None, {"scale": scale, "task": task}, f"{task}/seed{seed}", measure=_measure_toy,
                 outputs=(("ours", task, seed), ("theirs", task, seed)))
            for task in ("small", "large") for seed in (0, 1)]


MEASURED_SUITE = Suite(name="measured", title="Toy timing", grid=_measured_grid, record=None, headline="value",
                       prepare=lambda options, cells: PREPARED.append(len(cells)))


def test_measured_cells_record_once_per_parameters_under_every_executor(tmp_path):
    ref = "tests.test_bench:MEASURED_SUITE"
    local = _options(tmp_path, "local")
    PREPARED.clear()
    after = run_suite(ref, local)
    assert len(after.done) == 4 and PREPARED == [4]  # the prepare step ran once, for the cells to run
    results = json.loads((Path(local.out) / "results.json").read_text())
    assert len(results["records"]) == 8 and {r["method"] for r in results["records"]} == {"ours", "theirs"}
    assert "| ours |" in (Path(local.out) / "README.md").read_text()
    run_suite(ref, local)
    assert PREPARED == [4]  # nothing left to run: no prepare, no measurement
    workers = _options(tmp_path, "workers")
    run_suite(ref, workers, executor="workers", workers=2)
    strip = lambda options: sorted((r["method"], r["task"], r["seed"], r["metrics"]["value"])  # noqa: E731
                                   for r in json.loads((Path(options.out) / "results.json").read_text())["records"])
    assert strip(local) == strip(workers)
    # a lost record: that cell alone is to run, its cost estimated from the others' measured time
    from grp_workbench.harness.bench import estimated_seconds

    (Path(local.runs) / "small" / "seed0" / "record.json").unlink()
    todo = plan(MEASURED_SUITE, local)
    assert len(todo.todo) == 1 and estimated_seconds(MEASURED_SUITE, local, todo.cells[todo.todo[0]], todo.done) >= 0
    run_suite(ref, local)
    # other parameters (another budget, same folders): every cell is measured again
    assert len(plan(MEASURED_SUITE, replace(local, budget="paper")).todo) == 4
    # a measurement that fails leaves no record: the cell stays to run
    broken = replace(MEASURED_SUITE.cells(local)[0], measure=lambda cell, folder: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_cell(MEASURED_SUITE, _options(tmp_path, "broken"), broken)
    assert not (Path(tmp_path / "broken" / "runs") / broken.run / "record.json").exists()


def test_a_report_rewritten_from_copied_measured_runs_names_the_machine_that_measured_them(tmp_path):
    from grp_workbench.harness.bench import write_suite_results
    from grp_workbench.harness.runs import machine_info

    ref = "tests.test_bench:MEASURED_SUITE"
    options = _options(tmp_path, "copied")
    run_suite(ref, options)
    lent = {"cpu": "a lent machine's CPU", "cores": 16, "gpu": "NVIDIA H200", "torch": "2.11.0+cu130"}
    for record_file in Path(options.runs).rglob("record.json"):  # as if measured there and copied here
        record = json.loads(record_file.read_text())
        record_file.write_text(json.dumps({**record, "machine": lent}))
    write_suite_results(MEASURED_SUITE, options, "workbench bench measured --report-only")
    assert json.loads((Path(options.out) / "results.json").read_text())["machine"] == lent
    # one cell measured here, the others there: the report cannot name one machine, so it names this one
    record_file = next(Path(options.runs).rglob("record.json"))
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "machine": machine_info()}))
    write_suite_results(MEASURED_SUITE, options, "workbench bench measured --report-only")
    assert json.loads((Path(options.out) / "results.json").read_text())["machine"] == machine_info()


@pytest.mark.parametrize("suite_name,options,records", [
    # measured cells: priors and classifier trained, a Flower simulation captured, then each attack per update
    ("gradient_inversion", {"tasks": ("smallcnn-bs1-untrained-indist-none",)}, 4),
    # a prepared level VAE, then four students each evaluated on two level sets: the two aggregates
    # and one record per structure (4 of test.npz, 14 of held_out.npz)
    ("level_generation", {"seeds": (0,)}, 4 * (2 + 4 + 14)),
    # a prepared (and pinned) classifier and teacher, then the teacher scored and SFD, SA, SalUn trained
    ("diffusion_unlearning", {"tasks": ("mnist-forget0",)}, 4),
    # the five MBPO variants on PointReach, then the side-by-side speed cell's five contenders
    ("mbrl", {}, 5 + 5),
])
def test_a_real_suite_runs_end_to_end_at_its_tiny_budget(suite_name, options, records, tmp_path):
    ref_options = _options(tmp_path, suite_name, budget="tiny", **options)
    import_path = os.environ.get("PYTHONPATH")
    after = run_suite(suite_name, ref_options)
    assert not after.todo
    assert os.environ.get("PYTHONPATH") == import_path  # a Flower simulation gives the benchmark its own back
    results = json.loads((Path(ref_options.out) / "results.json").read_text())
    assert len(results["records"]) == records
    readme = (Path(ref_options.out) / "README.md").read_text()
    assert "Status: PARTIAL" in readme or "Status: complete" in readme
    assert "Claims of the paper and the direction measured here" in readme
    if suite_name == "diffusion_unlearning":  # the shared teacher is pinned beside the results
        assert RunDir(Path(ref_options.out) / "pinned" / "teacher").is_finished()
    if suite_name == "mbrl":  # the figures the issue asks for
        assert "learning_curves.png" in readme and "lipschitz_vs_return.png" in readme
    if suite_name == "level_generation":  # DRED's buffer statistics, drawn from its run's logs
        assert (Path(ref_options.out) / "buffer.png").is_file() and "buffer.png" in readme


def test_a_prerequisite_is_pinned_once_and_restored_without_training(tmp_path, monkeypatch):
    """A suite's shared model (a pre-trained GAN) is copied, slim, into the results folder; a fresh
    run root restores that copy instead of training another model."""
    from grp_workbench.harness import bench

    options = _options(tmp_path, "pinned")
    config = build_config(ToyConfig, TOY_PRESETS, "paper", {"total_steps": "10", "deterministic": "true"})
    first = Path(options.runs) / "prereq" / "model"
    bench.prerequisite_run(TOY_SUITE, options, "model", TOY_SPEC, config, first, "paper", keep=("model",))
    pinned = Path(options.out) / "pinned" / "model"
    assert RunDir(pinned).is_finished() and set(RunDir(pinned).last_algorithm_state("x", "y")) == {"model"}

    def no_training(*args, **kwargs):
        raise AssertionError("trained although a pinned copy exists")

    monkeypatch.setattr(bench, "train_cell", no_training)
    again = Path(options.runs) / "elsewhere" / "model"
    bench.prerequisite_run(TOY_SUITE, options, "model", TOY_SPEC, config, again, "paper", keep=("model",))
    restored, original = RunDir(again).last_algorithm_state("x", "y"), RunDir(first).last_algorithm_state("x", "y")
    assert all(restored["model"][k].equal(v) for k, v in original["model"].items())
    # another config is trained and pinned again, never silently replaced by the old copy
    monkeypatch.undo()
    other = build_config(ToyConfig, TOY_PRESETS, "paper", {"total_steps": "12", "deterministic": "true"})
    bench.prerequisite_run(TOY_SUITE, options, "model", TOY_SPEC, other, Path(options.runs) / "third", "paper",
                           keep=("model",))
    assert RunDir(pinned).summary["step"] == 12
    with pytest.raises(HarnessError, match="'weights'"):
        bench.prerequisite_run(TOY_SUITE, options, "typo", TOY_SPEC, other, Path(options.runs) / "fourth", "paper",
                               keep=("weights",))
    # a suite that now keeps more of the state (the optimizer) than its pinned copy has: one clear error,
    # never a silent retrain that would put records of two models in one table
    with pytest.raises(HarnessError, match=r"pinned/model has no 'optimizer'.*delete"):
        bench.prerequisite_run(TOY_SUITE, options, "model", TOY_SPEC, other, Path(options.runs) / "fifth", "paper",
                               keep=("model", "optimizer"))
    assert not (Path(options.runs) / "fifth").exists()
