"""Secure aggregation for the Flower app: what a curious server can still invert when it sees only a sum.

With ``secagg=true`` the simulation runs Flower's SecAgg+ protocol (Bell et al., CCS 2020; Flower's
``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on each client) instead of plain FedAvg.
Each client masks its (quantized) weights with pairwise and private masks whose seeds are
secret-shared with ``secagg_shares`` neighbours; the server unmasks only their sum, so the one
update it can record per round is the example-weighted average of the k participants' new weights.
For FedSGD with equal batches that average is one SGD step on the union of the k batches: the
capture is an update of batch k x B (``batch_size`` of the capture), and its ground truth is the
union of the participants' notes (``federated/attack.py::client_truth``).

The protocol needs Flower's legacy message layout (``fitins`` / ``fitres`` records, a legacy
``Strategy`` inside a ``LegacyContext``), so this module has its own ClientApp and ServerApp around
the same local update (``app.local_update``) and the same capture format (``app.CAPTURE_KEYS``).
SecAgg+ scales each client's weights by (example count / ``max_weight``), clips them to
+-``clipping_range`` (8) and quantizes them to 2^22 levels, so the recorded average is exact to about
16 / 2^22 x max_weight / count per weight: with Flower's default ``max_weight`` 1000 and FedSGD
batches of one that was 3e-3 per weight (measured: gradient errors of 0.03), hence
``secagg_max_weight`` (default: the FedSGD batch size, the largest count a FedSGD client reports).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from grp_workbench.federated.app import FLSettings, local_update, make_model, mnist_with_roles
from grp_workbench.harness.runs import atomic_torch_save, atomic_write_json

# ---- client ------------------------------------------------------------------------------------
secagg_client_app = ClientApp(mods=[secaggplus_mod])


@secagg_client_app.train()
def secagg_client_train(msg: Message, context: Context) -> Message:
    settings = FLSettings.from_run_config(dict(context.run_config))
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    names = list(make_model(settings.seed, settings.model).state_dict())
    global_state = {name: torch.from_numpy(array.copy())
                    for name, array in zip(names, parameters_to_ndarrays(fitins.parameters), strict=True)}
    state, n_examples, steps = local_update(settings, context, global_state, int(fitins.config["server-round"]))
    fitres = FitRes(status=Status(Code.OK, ""), num_examples=n_examples, metrics={"local-steps": steps},
                    parameters=ndarrays_to_parameters([state[name].numpy() for name in names]))
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


# ---- server ------------------------------------------------------------------------------------
class CuriousSecAggFedAvg(LegacyFedAvg):
    """FedAvg under SecAgg+ that records, in chosen rounds, the one thing it sees: the unmasked average."""

    def __init__(self, settings: FLSettings, capture_dir: Path, names: list[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.settings, self.capture_dir, self.names = settings, capture_dir, names
        self.sent: dict[int, dict[str, torch.Tensor]] = {}
        self.captured: list[str] = []
        self.rounds: list[dict[str, Any]] = []

    def configure_fit(self, server_round, parameters, client_manager):
        if server_round in self.settings.rounds_to_capture():
            self.sent[server_round] = self._state(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        # every result carries the same unmasked average (SecAggPlusWorkflow.unmask_stage)
        nodes = sorted(int(proxy.cid) for proxy, _ in results)
        self.rounds.append({"round": server_round, "participants": len(results), "failures": len(failures),
                            "aggregated_nodes": nodes})
        if server_round in self.sent and results:
            s, fitres = self.settings, results[0][1]
            record = {
                "round": server_round, "node_id": -1, "node_ids": nodes,  # -1: no single client
                "global_weights": self.sent[server_round], "client_weights": self._state(fitres.parameters),
                "mode": s.mode, "local_lr": s.local_lr, "batch_size": s.batch_size * len(results),
                "local_steps": int(fitres.metrics.get("local-steps", 1)),
                "num_examples": int(sum(res.num_examples for _, res in results)),
                "defense": {"name": s.defense, "secagg": True, "secagg_clients": len(results),
                            "noise_std": s.noise_std, "clip_norm": s.clip_norm, "prune_fraction": s.prune_fraction,
                            "soteria_rate": s.soteria_rate},
                "settings": dataclasses.asdict(s),
            }
            path = self.capture_dir / f"round{server_round:03d}-aggregate.pt"
            atomic_torch_save(record, path)
            self.captured.append(str(path))
        return super().aggregate_fit(server_round, results, failures)

    def _state(self, parameters) -> dict[str, torch.Tensor]:
        arrays = parameters_to_ndarrays(parameters)
        return {name: torch.from_numpy(np.array(a, dtype=np.float32)) for name, a in zip(self.names, arrays,
                                                                                         strict=True)}


secagg_server_app = ServerApp()


@secagg_server_app.main()
def secagg_server_main(grid: Grid, context: Context) -> None:
    settings = FLSettings.from_run_config(dict(context.run_config))
    output = Path(settings.output_dir)
    data, roles = mnist_with_roles(settings.data_dir, settings.seed)
    test_images, test_labels = data.images[roles["server_test"]], data.labels[roles["server_test"]]
    model = make_model(settings.seed, settings.model)
    names = list(model.state_dict())
    history: list[dict[str, float]] = []

    def evaluate(server_round: int, arrays: list[np.ndarray], config: dict[str, Any]):
        model.load_state_dict({n: torch.from_numpy(np.array(a, dtype=np.float32)) for n, a in zip(names, arrays)})
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
        history.append({"round": server_round, "accuracy": accuracy})
        return 0.0, {"accuracy": accuracy}

    strategy = CuriousSecAggFedAvg(
        settings, output / "captures", names, fraction_fit=settings.fraction_train, fraction_evaluate=0.0,
        min_fit_clients=1, min_available_clients=1, evaluate_fn=evaluate,
        on_fit_config_fn=lambda server_round: {"server-round": server_round},
        initial_parameters=ndarrays_to_parameters([t.numpy() for t in model.state_dict().values()]))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=settings.num_server_rounds),
                           strategy=strategy)
    max_weight = settings.secagg_max_weight or (settings.batch_size if settings.mode == "fedsgd" else 1000.0)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=settings.secagg_shares, reconstruction_threshold=settings.secagg_threshold, max_weight=max_weight))
    workflow(grid, legacy)
    atomic_write_json(output / "summary.json", {"settings": dataclasses.asdict(settings), "history": history,
                                                "rounds": strategy.rounds, "captures": strategy.captured})
