"""Run the Flower app in Flower's simulation engine from Python (Ray backend, all in this machine).

    from grp_workbench.federated.app import FLSettings
    from grp_workbench.federated.simulate import simulate
    summary = simulate(FLSettings(num_server_rounds=3, fraction_train=0.1), num_clients=100)

The same app runs with ``flwr run`` on a local-simulation federation or on the deployment engine
(SuperLink + SuperNodes); see federated/README.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from grp_workbench.federated import FederatedError
from grp_workbench.federated.app import SETTINGS_ENV, FLSettings, client_app, server_app
from grp_workbench.harness.runs import atomic_write_json, require_writable_folder


def simulate(settings: FLSettings, num_clients: int, cpus_per_client: float = 1.0,
             verbose: bool = False) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    require_writable_folder(settings.output_dir, "output folder")
    _require_same_settings(settings, num_clients)
    encoded = json.dumps(dataclasses.asdict(settings))
    # Flower's Ray backend rewrites this process's environment (PYTHONPATH gains Ray's third-party
    # folder and an empty entry, i.e. the working directory); a caller that goes on (a benchmark,
    # a subprocess it starts) gets its own environment back
    environment = dict(os.environ)
    # the ServerApp runs in a thread of this process, and Ray's workers inherit its environment
    os.environ[SETTINGS_ENV] = encoded
    backend_config = {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}}
    try:
        if settings.secagg:  # Flower's SecAgg+ workflow and client mod (federated/secagg.py)
            from grp_workbench.federated.secagg import secagg_client_app, secagg_server_app

            apps = {"server_app": secagg_server_app, "client_app": secagg_client_app}
        else:
            apps = {"server_app": server_app, "client_app": client_app}
        run_simulation(**apps, num_supernodes=num_clients,
                       backend_config=backend_config, verbose_logging=verbose)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    summary_path = Path(settings.output_dir) / "summary.json"
    summary = json.loads(summary_path.read_text())
    atomic_write_json(summary_path, {**summary, "num_clients": num_clients})
    return summary


def _require_same_settings(settings: FLSettings, num_clients: int) -> None:
    """Captures are inputs of attacks and benchmarks: a simulation never overwrites those of other
    settings under the same output folder."""
    summary_path = Path(settings.output_dir) / "summary.json"
    if not summary_path.is_file():
        return
    before = json.loads(summary_path.read_text())
    now = {**dataclasses.asdict(settings), "num_clients": num_clients}
    saved = {**before.get("settings", {}), "num_clients": before.get("num_clients", num_clients)}
    changed = {key: (saved.get(key), value) for key, value in now.items() if saved.get(key) != value}
    if changed:
        detail = ", ".join(f"{key}: {a!r} -> {b!r}" for key, (a, b) in changed.items())
        raise FederatedError(f"{settings.output_dir} holds the captures of a simulation with other settings "
                             f"({detail}); choose another --set output_dir=..., or delete that folder to replace them.")
