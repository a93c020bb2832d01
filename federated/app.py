"""The Flower app: FedSGD / FedAvg training of the small CNN on MNIST, with an honest-but-curious server.

``client_app`` and ``server_app`` follow Flower's current API (``ClientApp`` / ``ServerApp`` with
``Message`` and records). They run in the simulation engine (``flwr run`` with a local-simulation
federation, or ``run_simulation`` from Python, see ``federated/simulate.py``) and on the deployment
engine (SuperLink + SuperNodes) unchanged. Settings come from ``[tool.flwr.app.config]`` in
pyproject.toml and ``--run-config`` (keys as ``FLSettings`` with dashes).

The server aggregates with FedAvg and, being curious, writes the update of chosen clients in chosen
rounds to ``<output-dir>/captures/`` with what an attacker would know: the global weights it sent,
the client's returned weights, the learning rate, the local steps and the batch size. It knows a
client only by the node id Flower routes its messages with: clients report no identifier (their
partition id would let a server tie an update to a data shard, and earlier, to seeded noise).

What a captured update was computed from is evaluation bookkeeping outside the protocol: in a
captured round each client writes its own note (partition and the indices it trained on) to
``<output-dir>/client_truth/`` (``CLIENT_TRUTH_DIR``), which the server app never reads and the attack
scorer joins to a capture by round and node id (``federated/attack.py::capture_ground_truth``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from grp_workbench.federated import FederatedError
from grp_workbench.federated.data import ImageDataset, load_digits_as_mnist, load_image_folder, load_mnist
from grp_workbench.federated.defenses import defend, local_dp, local_dp_std, soteria
from grp_workbench.federated.models import VICTIM_MODELS
from grp_workbench.federated.partition import assign_roles, client_batch, dirichlet_partition, iid_partition
from grp_workbench.harness.config import apply_overrides
from grp_workbench.harness.runs import atomic_torch_save, atomic_write_json

SETTINGS_ENV = "WORKBENCH_FL_SETTINGS"


@dataclass
class FLSettings:
    num_server_rounds: int = 3
    fraction_train: float = 1.0  # share of clients sampled per round
    mode: str = "fedsgd"  # fedsgd: one gradient on one batch; fedavg: local epochs of SGD
    local_epochs: int = 1  # fedavg only
    # each client holds only the first N images of its partition (0: all of it). With N = batch_size a
    # FedAvg client takes local_epochs full-batch steps on one batch: the setting in which an attacker
    # who simulates the local steps (GIFD's FedAvgReconstructor) knows every step's batch
    client_examples: int = 0
    local_lr: float = 0.1
    batch_size: int = 8
    partition: str = "iid"  # iid | dirichlet
    dirichlet_alpha: float = 0.5
    defense: str = "none"  # none | noise | clip | clip+noise | prune (federated/defenses.py)
    noise_std: float = 0.01
    clip_norm: float = 4.0
    prune_fraction: float = 0.2
    soteria_rate: float = 10.0  # soteria: percent of last-layer input features pruned
    dp_epsilon: float = 8.0  # dp: the (epsilon, delta) of each released update (Flower's LocalDpMod)
    dp_delta: float = 1e-5
    # secure aggregation (Flower's SecAgg+: SecAggPlusWorkflow / secaggplus_mod, federated/secagg.py): the
    # server learns only the weighted average of the round's updates; shares and threshold as Flower's
    secagg: bool = False
    secagg_shares: int = 3  # each client's secret-sharing neighbours
    secagg_threshold: int = 2  # shares needed to unmask a client (>= 2, <= secagg_shares)
    # the largest example count a client may report: SecAgg+ scales each update by count / max_weight
    # before quantizing, so a bound far above the real counts costs precision (Flower's 1000 with
    # FedSGD batches of 1 left errors of 3e-3 per weight). 0 = the batch size for FedSGD, 1000 for FedAvg
    secagg_max_weight: float = 0.0
    capture_rounds: str = "1"  # comma-separated rounds whose updates the server records ("" = none)
    capture_clients: str = "1"  # per captured round, record this many replies (lowest node ids first), or "all"
    output_dir: str = "runs/federated/app"
    data_dir: str = ""  # MNIST folder; empty = $WORKBENCH_DATA/mnist or ../shared/datasets/mnist
    # the clients' images: mnist (MNIST's client role), digits (scikit-learn's 1,797 digits upsampled
    # to 28x28: out of distribution for an MNIST prior), or a folder with one subfolder per label
    # (0/, 1/, ...) of images (read as 28x28 grayscale); the server's test set stays MNIST
    client_data: str = "mnist"
    model: str = "smallcnn"  # the task model (federated/models.py VICTIM_MODELS): smallcnn | resnet
    seed: int = 0

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FLSettings:
        """Defaults, then ``$WORKBENCH_FL_SETTINGS`` (JSON; how ``simulate`` reaches Ray workers, since
        Flower's Python ``run_simulation`` takes no run config), then the Flower run config."""
        values = json.loads(os.environ.get(SETTINGS_ENV, "{}"))
        values |= {key.replace("-", "_"): value for key, value in run_config.items()}
        settings = apply_overrides(cls(), values, where="run config")
        if settings.mode not in ("fedsgd", "fedavg"):
            raise FederatedError(f"mode={settings.mode!r} must be fedsgd or fedavg.")
        if settings.partition not in ("iid", "dirichlet"):
            raise FederatedError(f"partition={settings.partition!r} must be iid or dirichlet.")
        if settings.client_data not in ("mnist", "digits") and not Path(settings.client_data).is_dir():
            raise FederatedError(f"client_data={settings.client_data!r} must be mnist, digits or a folder of "
                                 "label subfolders (0/, 1/, ...) of images.")
        if settings.client_examples < 0:
            raise FederatedError(f"client_examples={settings.client_examples} must be 0 (every image of the "
                                 "partition) or a positive number of images per client.")
        if settings.model not in VICTIM_MODELS:
            raise FederatedError(f"model={settings.model!r} is not one of {', '.join(VICTIM_MODELS)}.")
        if settings.defense == "dp":
            local_dp_std(settings.clip_norm, settings.dp_epsilon, settings.dp_delta)  # bad values: one line now
        if settings.defense == "soteria" and settings.mode != "fedsgd":
            raise FederatedError("defense=soteria perturbs one FedSGD gradient; use mode=fedsgd (or another defense).")
        if settings.secagg and not 2 <= settings.secagg_threshold <= settings.secagg_shares:
            raise FederatedError(f"secagg_threshold={settings.secagg_threshold} must lie in 2..secagg_shares "
                                 f"({settings.secagg_shares}).")
        if settings.secagg and settings.defense == "soteria":
            raise FederatedError("defense=soteria needs the adaptive attacker's view of one client's gradient; it is "
                                 "not run under secagg.")
        settings.rounds_to_capture()  # a malformed list is one line here, before Ray or Flower start
        settings.clients_to_capture()
        return settings

    def rounds_to_capture(self) -> set[int]:
        return _id_list("capture_rounds", self.capture_rounds, "comma-separated round numbers, e.g. 1,3")

    def clients_to_capture(self) -> int | None:
        """How many replies a captured round records (None: all)."""
        if self.capture_clients == "all":
            return None
        if not str(self.capture_clients).isdigit() or int(self.capture_clients) < 1:
            raise FederatedError(f"capture_clients={self.capture_clients!r} must be a positive number of clients per "
                                 "captured round, or 'all'.")
        return int(self.capture_clients)


def _id_list(key: str, value: str, expected: str) -> set[int]:
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    bad = [item for item in items if not item.isdigit()]
    if bad:
        raise FederatedError(f"{key}={value!r}: {bad[0]!r} is not a non-negative integer; expected {expected}.")
    return {int(item) for item in items}


def make_model(seed: int, name: str = "smallcnn") -> torch.nn.Module:
    """The shared model (``VICTIM_MODELS``): the foundation's CNN, or the small ResNet, without dropout,
    so a client's gradient is a function of its data alone (what gradient inversion assumes; GIFD
    runs its model in eval mode too)."""
    if name not in VICTIM_MODELS:
        raise FederatedError(f"model={name!r} is not one of {', '.join(VICTIM_MODELS)}.")
    torch.manual_seed(seed)
    return VICTIM_MODELS[name]()


@functools.lru_cache(maxsize=4)
def mnist_with_roles(data_dir: str, seed: int) -> tuple[ImageDataset, dict[str, np.ndarray]]:
    data = load_mnist(data_dir or None, "test")
    return data, assign_roles(data.labels, seed)


@functools.lru_cache(maxsize=4)
def client_pool(client_data: str, data_dir: str, seed: int) -> tuple[ImageDataset, np.ndarray]:
    """The images clients hold and the indices of that array they are dealt from."""
    if client_data == "mnist":
        data, roles = mnist_with_roles(data_dir, seed)
        return data, roles["clients"]
    data = load_digits_as_mnist() if client_data == "digits" else load_image_folder(client_data)
    return data, np.arange(len(data))


def client_partitions(data_dir: str, seed: int, n_partitions: int, partition: str,
                      alpha: float, client_data: str = "mnist") -> list[np.ndarray]:
    """Each client's image indices (into ``client_pool``'s array)."""
    data, pool = client_pool(client_data, data_dir, seed)
    if partition == "iid":
        parts = iid_partition(len(pool), n_partitions, seed)
    else:
        parts = dirichlet_partition(data.labels[pool].numpy(), n_partitions, alpha, seed)
    return [pool[p] for p in parts]


def batch_gradient(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    loss = F.cross_entropy(model(images), labels)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


# ---- client ------------------------------------------------------------------------------------
client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    settings = FLSettings.from_run_config(dict(context.run_config))
    server_round = int(msg.content["config"]["server-round"])
    state, n_examples, steps = local_update(settings, context, msg.content["arrays"].to_torch_state_dict(),
                                            server_round)
    metrics = MetricRecord({"num-examples": n_examples, "local-steps": steps})
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


def local_update(settings: FLSettings, context: Context, global_state: dict[str, torch.Tensor], server_round: int
                 ) -> tuple[dict[str, torch.Tensor], int, int]:
    """The client's (defended) new weights from the global ones, its example count and local steps;
    in a captured round it also writes its note of what it trained on (``write_client_truth``)."""
    partition_id = int(context.node_config["partition-id"])  # the client's own: never sent
    n_partitions = int(context.node_config["num-partitions"])
    data, _ = client_pool(settings.client_data, settings.data_dir, settings.seed)
    mine = client_partitions(settings.data_dir, settings.seed, n_partitions, settings.partition,
                             settings.dirichlet_alpha, settings.client_data)[partition_id]
    if settings.client_examples:
        mine = mine[:settings.client_examples]
    model = make_model(settings.seed, settings.model)
    model.load_state_dict(global_state)
    model.eval()  # no dropout or batch-norm in this model; eval keeps it that way for any model
    # The defense's noise comes from the operating system's entropy: seeded from anything the server
    # also knows (run seed, round, partition id) it could be regenerated and subtracted exactly.
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    weights = [p.detach().clone() for p in model.parameters()]
    if settings.mode == "fedsgd":
        batch = client_batch(mine, settings.batch_size, server_round, partition_id, settings.seed)
        gradient = batch_gradient(model, data.images[batch], data.labels[batch])
        if settings.defense == "soteria":
            shared = soteria(model, data.images[batch], gradient, settings.soteria_rate)
        elif settings.defense != "dp":
            shared = defend(settings.defense, gradient, generator, settings.noise_std, settings.clip_norm,
                            settings.prune_fraction)
        else:  # LocalDpMod clips and noises the update new - old = -lr * gradient
            update = local_dp([-settings.local_lr * g for g in gradient], generator, settings.clip_norm,
                              settings.dp_epsilon, settings.dp_delta)
            shared = [-u / settings.local_lr for u in update]
        new_weights = [w - settings.local_lr * g for w, g in zip(weights, shared)]
        n_examples, steps, used = len(batch), 1, batch
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=settings.local_lr)
        order_rng = np.random.default_rng([settings.seed, server_round, partition_id])
        steps = 0
        for _ in range(settings.local_epochs):
            order = mine[order_rng.permutation(len(mine))]
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                optimizer.zero_grad()
                F.cross_entropy(model(data.images[batch]), data.labels[batch]).backward()
                optimizer.step()
                steps += 1
        delta = [p.detach() - w for p, w in zip(model.parameters(), weights)]
        if settings.defense == "dp":
            delta = local_dp(delta, generator, settings.clip_norm, settings.dp_epsilon, settings.dp_delta)
        else:
            delta = defend(settings.defense, delta, generator, settings.noise_std, settings.clip_norm,
                           settings.prune_fraction)
        new_weights = [w + d for w, d in zip(weights, delta)]
        n_examples, used = len(mine) * settings.local_epochs, mine
    state = {name: tensor for (name, _), tensor in zip(model.named_parameters(), new_weights)}
    if server_round in settings.rounds_to_capture():
        write_client_truth(settings.output_dir, server_round, int(context.node_id), partition_id, n_partitions, used)
    return state, n_examples, steps


# ---- server ------------------------------------------------------------------------------------
class CuriousFedAvg(FedAvg):
    """FedAvg that also records chosen clients' updates, with what an attacker knows, to disk."""

    def __init__(self, settings: FLSettings, capture_dir: Path, **kwargs: Any):
        super().__init__(train_metrics_aggr_fn=aggregate_train_metrics, **kwargs)
        self.settings, self.capture_dir = settings, capture_dir
        self.sent: dict[int, dict[str, torch.Tensor]] = {}
        self.captured: list[str] = []
        # per round: who answered and who failed (Flower drops a failed client's reply; say so)
        self.rounds: list[dict[str, Any]] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        if server_round in self.settings.rounds_to_capture():
            self.sent[server_round] = arrays.to_torch_state_dict()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        failed = [r for r in replies if r.has_error()]
        self.rounds.append({
            "round": server_round, "participants": len(replies) - len(failed), "failures": len(failed),
            "failed_nodes": [int(r.metadata.src_node_id) for r in failed],
            "failure_reasons": [str(r.error.reason) for r in failed]})
        if failed:
            print(f"round {server_round}: {len(failed)} of {len(replies)} clients failed and were left out "
                  f"({failed[0].error.reason}); their updates are neither aggregated nor captured.", flush=True)
        if server_round in self.sent:
            answered = sorted((r for r in replies if not r.has_error()), key=lambda r: int(r.metadata.src_node_id))
            for reply in answered[:self.settings.clients_to_capture()]:
                self._capture(server_round, reply)
        return super().aggregate_train(server_round, replies)

    def _capture(self, server_round: int, reply: Message) -> None:
        s, metrics, node_id = self.settings, reply.content["metrics"], int(reply.metadata.src_node_id)
        record = {
            "round": server_round, "node_id": node_id,
            "global_weights": self.sent[server_round], "client_weights": reply.content["arrays"].to_torch_state_dict(),
            "mode": s.mode, "local_lr": s.local_lr, "batch_size": s.batch_size,
            "local_steps": int(metrics["local-steps"]), "num_examples": int(metrics["num-examples"]),
            "defense": {"name": s.defense, "noise_std": s.noise_std, "clip_norm": s.clip_norm,
                        "prune_fraction": s.prune_fraction, "soteria_rate": s.soteria_rate,
                        # the privacy of this update (per round), next to every DP capture
                        **({"epsilon": s.dp_epsilon, "delta": s.dp_delta,
                            "noise_std": local_dp_std(s.clip_norm, s.dp_epsilon, s.dp_delta)}
                           if s.defense == "dp" else {})},
            "settings": dataclasses.asdict(s),
        }
        path = self.capture_dir / f"round{server_round:03d}-node{node_id}.pt"
        atomic_torch_save(record, path)
        self.captured.append(str(path))


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    settings = FLSettings.from_run_config(dict(context.run_config))
    output = Path(settings.output_dir)
    data, roles = mnist_with_roles(settings.data_dir, settings.seed)
    test_images, test_labels = data.images[roles["server_test"]], data.labels[roles["server_test"]]
    model = make_model(settings.seed, settings.model)
    strategy = CuriousFedAvg(settings, output / "captures", fraction_train=settings.fraction_train,
                             fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    history: list[dict[str, float]] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
        history.append({"round": server_round, "accuracy": accuracy})
        return MetricRecord({"accuracy": accuracy})

    strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=settings.num_server_rounds,
                   evaluate_fn=evaluate)
    atomic_write_json(output / "summary.json", {"settings": dataclasses.asdict(settings), "history": history,
                                                "rounds": strategy.rounds, "captures": strategy.captured})


CLIENT_TRUTH_DIR = "client_truth"


def client_truth_path(output_dir: str | Path, server_round: int, node_id: int) -> Path:
    return Path(output_dir) / CLIENT_TRUTH_DIR / f"round{server_round:03d}-node{node_id}.json"


def write_client_truth(output_dir: str | Path, server_round: int, node_id: int, partition_id: int,
                       num_partitions: int, indices: np.ndarray) -> None:
    """The client's note of what its update in a captured round was computed from (its partition and
    the pool indices it trained on), for scoring attacks only: outside the protocol, never sent to
    or read by the server app."""
    atomic_write_json(client_truth_path(output_dir, server_round, node_id),
                      {"round": server_round, "node_id": node_id, "partition_id": partition_id,
                       "num_partitions": num_partitions, "indices": [int(i) for i in indices]})


def aggregate_train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """The round's training metrics: examples and clients summed, local steps averaged by examples."""
    metrics = [record["metrics"] for record in records]
    examples = sum(int(m[weighting_key]) for m in metrics)
    steps = sum(float(m["local-steps"]) * int(m[weighting_key]) for m in metrics) / max(examples, 1)
    return MetricRecord({weighting_key: examples, "local-steps": steps, "clients": len(metrics)})


CAPTURE_KEYS = ("round", "node_id", "global_weights", "client_weights", "mode", "local_lr", "batch_size",
                "defense", "settings")


def read_capture(path: str | Path) -> dict[str, Any]:
    """A captured update, as the attacker sees it; ``gradient`` is recovered for FedSGD.

    Captures are read with ``weights_only=True``: tensors and plain containers only, so a file
    from elsewhere cannot run code when it is opened."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FederatedError(f"capture {path} {what}; pass a file the curious server wrote (<output_dir>/captures/"
                             "roundRRR-node<id>.pt, made by `workbench federated simulate`).")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FederatedError(f"capture {path} holds Python objects other than tensors and plain containers; it was "
                             "refused because unpickling it could run code. Capture the update again.") from None
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else "corrupt"
        raise FederatedError(f"capture {path} is not a readable capture ({type(err).__name__}: {reason}); capture "
                             "the update again.") from None
    missing = [key for key in CAPTURE_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise FederatedError(f"{path} is not a capture of this app (missing {', '.join(missing)}); capture the "
                             "update again with `workbench federated simulate`.")
    with torch.device("meta"):  # shapes only: no memory, no draw from the global generator
        model_name = record["settings"].get("model", "smallcnn") if isinstance(record.get("settings"), dict) \
            else "smallcnn"
        if model_name not in VICTIM_MODELS:
            raise FederatedError(f"capture {path} names model {model_name!r}, which this app does not have "
                                 f"({', '.join(VICTIM_MODELS)}).")
        expected = {key: tuple(value.shape) for key, value in VICTIM_MODELS[model_name]().state_dict().items()}
    for name in ("global_weights", "client_weights"):
        found = {key: tuple(value.shape) for key, value in record[name].items()}
        if found != expected:
            differ = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
            first = differ[0]
            raise FederatedError(f"capture {path} was made on another model: its {name} differ from this app's "
                                 f"{model_name} at {len(differ)} tensor(s), first {first} "
                                 f"({found.get(first, 'absent')} vs {expected.get(first, 'absent')}). "
                                 "Attack it with the code that captured it, or capture again.")
    if record["mode"] == "fedsgd":
        record["gradient"] = [(record["global_weights"][k] - record["client_weights"][k]) / record["local_lr"]
                              for k in record["client_weights"]]
    else:  # FedAvg: the weight change after the client's local steps
        record["update"] = [record["client_weights"][k] - record["global_weights"][k] for k in record["client_weights"]]
    return record
