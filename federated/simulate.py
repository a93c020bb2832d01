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

from grp_workbench.federated.app import SETTINGS_ENV, FLSettings, client_app, server_app


def simulate(settings: FLSettings, num_clients: int, cpus_per_client: float = 1.0,
             verbose: bool = False) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    encoded = json.dumps(dataclasses.asdict(settings))
    previous = os.environ.get(SETTINGS_ENV)
    # the ServerApp runs in a thread of this process, and Ray's workers inherit its environment
    os.environ[SETTINGS_ENV] = encoded
    backend_config = {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}}
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                       backend_config=backend_config, verbose_logging=verbose)
    finally:
        if previous is None:
            os.environ.pop(SETTINGS_ENV, None)
        else:
            os.environ[SETTINGS_ENV] = previous
    return json.loads((Path(settings.output_dir) / "summary.json").read_text())
