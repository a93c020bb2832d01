"""Run the federated app with ``flwr run``: on Flower's Deployment Engine (a SuperLink and N SuperNodes
as local processes) or, with ``--simulation``, on a local-simulation federation.

    python scripts/run_deployment.py --supernodes 3 --run-config "num-server-rounds=2 fraction-train=1.0"
    python scripts/run_deployment.py --simulation --supernodes 20 --run-config "fraction-train=0.5"

Steps, as in Flower's deployment guide: start ``flower-superlink --insecure``; start N
``flower-supernode --insecure`` with ``--node-config "partition-id=i num-partitions=N"``; register
the SuperLink as a connection in a private Flower configuration (``$FLWR_HOME/config.toml`` under a
temporary folder, so the user's own is untouched); submit this directory with ``flwr run .
<connection> --stream``; wait for the ServerApp's summary.json; stop every process. The same
``server_app`` / ``client_app`` as the simulation run; ``$WORKBENCH_DATA`` is passed to every
process so that the installed app finds MNIST. Logs of every process go to ``<output-dir>/logs``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_for_port(port: int, timeout: float, process: subprocess.Popen, name: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}; see its log")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"{name} did not open port {port} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--simulation", action="store_true",
                        help="a local-simulation federation instead: the SuperLink runs --supernodes virtual "
                             "nodes in Flower's Simulation Runtime (Ray); no SuperNode processes")
    parser.add_argument("--run-config", default="num-server-rounds=2 fraction-train=1.0",
                        help="run config overrides (keys of [tool.flwr.app.config])")
    parser.add_argument("--output-dir", default="runs/federated/deployment")
    parser.add_argument("--superlink-port", type=int, default=8000)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the run")
    args = parser.parse_args()
    output = Path(args.output_dir).resolve()
    logs = output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").unlink(missing_ok=True)
    flwr_home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    connection = (f'[superlink]\ndefault = "workbench-local"\n\n[superlink.workbench-local]\n'
                  f'address = "127.0.0.1:{args.superlink_port}"\ninsecure = true\n')
    if args.simulation:
        connection += (f"options.num-supernodes = {args.supernodes}\n"
                       "options.backend.client-resources.num-cpus = 1\n"
                       "options.backend.client-resources.num-gpus = 0.0\n")
    (flwr_home / "config.toml").write_text(connection)
    # the SuperLink and SuperNodes start flower-superexec / flwr-serverapp / flwr-clientapp by name
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    from grp_workbench.harness.data import find_dataset_dir

    mnist = find_dataset_dir("mnist")
    if mnist is not None:
        env["WORKBENCH_DATA"] = str(mnist.parent)
    processes: list[subprocess.Popen] = []

    def start(name: str, command: list[str]) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        processes.append(process)
        return process

    try:
        # no `uv sync` of the app's dependencies into a fresh environment (Flower's default): it would
        # pull a new torch with CUDA wheels; the app runs in this environment, as the simulation does
        superlink = start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--port", str(args.superlink_port),
                                        "--disable-runtime-dependency-installation",
                                        *(["--simulation"] if args.simulation else [])])
        wait_for_port(args.superlink_port, 60, superlink, "flower-superlink")
        for i in range(0 if args.simulation else args.supernodes):
            start(f"supernode{i}", [str(BIN / "flower-supernode"), "--insecure",
                                    "--superlink", f"127.0.0.1:{args.superlink_port}",
                                    "--port", str(args.superlink_port + 1 + i),
                                    "--node-config", f"partition-id={i} num-partitions={args.supernodes}"])
        run_config = f'{args.run_config} output-dir="{output}"'
        command = [str(BIN / "flwr"), "run", ".", "workbench-local", "--run-config", run_config, "--stream"]
        print("$ " + shlex.join(command), flush=True)
        with open(logs / "flwr-run.log", "w") as log:
            runner = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            deadline = time.time() + args.timeout
            while not (output / "summary.json").is_file():
                if time.time() > deadline:
                    raise SystemExit(f"no summary.json after {args.timeout:.0f} s; logs in {logs}")
                if runner.poll() not in (None, 0):
                    raise SystemExit(f"flwr run exited with {runner.returncode}; see {logs / 'flwr-run.log'}")
                time.sleep(1)
            runner.terminate()
        summary = json.loads((output / "summary.json").read_text())
        last = summary["history"][-1]
        kind = "simulated nodes (Simulation Runtime)" if args.simulation else "SuperNodes (Deployment Runtime)"
        print(f"flwr run finished: {args.supernodes} {kind}, round {last['round']} accuracy "
              f"{last['accuracy']:.4f}, {len(summary['captures'])} capture(s); logs in {logs}")
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(flwr_home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
