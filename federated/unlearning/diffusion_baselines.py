"""The peers of Score Forgetting Distillation: Selective Amnesia and SalUn on the same diffusion teacher.

Both fine-tune a copy of the teacher (a `workbench federated train-diffusion` run) so that samples
conditioned on the forgotten digit stop looking like it, and are sampled like the teacher (DDIM, 20
steps): they are the multi-step baselines next to SFD's one-step generator.

**Selective Amnesia** (Heng & Soh, NeurIPS 2023; github clear-nus/selective-amnesia, ``ddpm/``):

1. Replay set: samples of the ORIGINAL model for every digit (``sample.py --mode sample_classes``,
   README step 2: 500 per class), drawn once before training; the remaining digits' samples are the
   generative replay (``all_but_one_class_path_dataset``, runners/diffusion.py:253).
2. Diagonal Fisher at the original weights (``fim.py`` -> ``save_fim``, runners/diffusion.py:94-170):
   for each replay sample of every class, the gradient of its denoising loss SUMMED over all T = 1000
   timesteps (one noise draw per t, ``keepdim=True`` per-sample losses), squared, averaged over samples.
3. ``train_forget`` (runners/diffusion.py:249-330), per step with one antithetic t shared by both terms:
   L = DSM(x_f ~ U[-1, 1], c_f) + gamma DSM(replay x_r, c_r) + lambda sum_i F_i (theta_i - theta*_i)^2,
   labels never dropped (``cond_drop_prob = 0.``); gamma 1, lambda 10, Adam lr 1e-4 betas (0.9, 0.999)
   eps 1e-8, gradient-norm clip 1.0, batch 128, 20,000 iterations (``configs/cifar10_forget.yml``).

**SalUn** (Fan et al., ICLR 2024; github OPTML-Group/Unlearn-Saliency, ``DDPM/``), method ``rl``:

1. Saliency mask (``generate_mask``, runners/diffusion.py:933-1039): the gradient of the denoising loss
   on the REAL images of the forgotten class (batches of 128, each batch's gradient norm-clipped at 1.0
   and summed); m = 1 on the top 50% of |gradient| over all parameters together (``threshold_list``
   [0.5]), 0 elsewhere.
2. ``saliency_unlearn`` (runners/diffusion.py:482-600): L = MSE(eps_theta(x_t^f, t, c_f),
   sg eps_theta(x_t^f, t, (c_f + 1) mod 10)) + alpha DSM(real remaining images) with alpha 1e-3
   (README command ``--alpha 1e-3 --method rl``), the remaining term with the usual label drop 0.1;
   gradients norm-clipped at 1.0, THEN multiplied by m; Adam lr 1e-4, batch 128 of each set, 1,000
   iterations (``configs/cifar10_saliency_unlearn.yml``). SalUn reads real training images (the
   teacher's 8,000 here); SFD and SA do not.

Departures (each stated in the suite's notes too):

* both start from the teacher's EMA weights (the official codes start from the raw weights and keep
  updating the teacher's EMA at 0.9999; with 0.9999 over 1,000 steps the evaluated EMA stays 90%
  teacher). The evaluated model is an EMA of the fine-tuned weights at ``ema_decay``: official 0.9999,
  ``quick`` 0.99 as SFD's ``quick``, so that the three methods are judged the same way;
* SA's Fisher sums the per-timestep losses over ``fim_timesteps`` evenly spaced t, scaled by
  T / fim_timesteps (official: all 1000), on ``fim_per_class`` samples per digit (official 500):
  on a CPU, 500 x 10 x 1000 backward passes are days. The official ``fim.py`` feeds images in [0, 1]
  (``ToTensor`` without ``data_transform``); here they are in the model's [-1, 1];
* SalUn's forget term drops no label (the official ``mode="train"`` passes drop each label with
  probability 0.1 independently in the prediction and in its target, so some targets are unconditional);
* the ``quick`` preset gives every method SFD's quick budget: 400 steps of batch 32, evaluated on
  samples of the EMA.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grp_workbench.federated import FederatedError
from grp_workbench.federated.generative.diffusion import NULL_LABEL, NUM_CLASSES, TIMESTEPS, diffuse, sample
from grp_workbench.federated.unlearning import sfd
from grp_workbench.federated.unlearning.metrics import check_forget_class
from grp_workbench.federated.unlearning.sfd import conditional_unlearning_metrics
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec

METHODS = ("selective-amnesia", "salun")


@dataclass
class DiffusionUnlearningConfig(TrainConfig):
    teacher: str = ""  # a `workbench federated train-diffusion` run directory (required)
    classifier: str = ""  # the evaluation classifier: a `workbench federated train-classifier` run (required)
    forget: int = 0  # the digit to forget
    method: str = "selective-amnesia"  # or "salun"
    lr: float = 1e-4  # Adam, betas (0.9, 0.999), eps 1e-8 (both official configs)
    grad_clip: float = 1.0  # gradient-norm clip
    batch_size: int = 128
    ema_decay: float = 0.9999  # of the fine-tuned weights; the EMA is evaluated
    # Selective Amnesia (configs/cifar10_forget.yml, README)
    sa_lambda: float = 10.0
    sa_gamma: float = 1.0
    replay_per_class: int = 500
    fim_per_class: int = 500
    fim_timesteps: int = 1000
    # SalUn (configs/cifar10_saliency_unlearn.yml, README)
    salun_alpha: float = 1e-3
    mask_fraction: float = 0.5  # share of parameters updated (top |gradient| of the forget loss)
    remain_cond_drop: float = 0.1  # label drop in SalUn's remaining-data term, as in training
    data_dir: str | None = None  # MNIST IDX folder for SalUn's real images (default as train-diffusion)
    # evaluation: DDIM samples of every digit, as the teacher is sampled
    sample_steps: int = 20
    eval_per_class: int = 50
    total_steps: int = 20_000
    eval_every: int = 2_000
    log_every: int = 50
    checkpoint_every: int = 1_000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_forget_class(self.forget)
        if self.method not in METHODS:
            raise FederatedError(f"method={self.method!r} is not one of {', '.join(METHODS)}.")
        if not 0 < self.mask_fraction <= 1:
            raise FederatedError(f"mask_fraction={self.mask_fraction} must lie in (0, 1].")
        if not 1 <= self.fim_timesteps <= TIMESTEPS:
            raise FederatedError(f"fim_timesteps={self.fim_timesteps} must lie in 1..{TIMESTEPS}.")
        if min(self.replay_per_class, self.fim_per_class) < 1:
            raise FederatedError("replay_per_class and fim_per_class must be at least 1.")

    @property
    def remaining(self) -> list[int]:
        return [d for d in range(NUM_CLASSES) if d != self.forget]


def load_inputs(config: DiffusionUnlearningConfig, device: str | torch.device) -> tuple[nn.Module, nn.Module]:
    """The teacher's EMA network and the evaluation classifier (as SFD loads them)."""
    return sfd.load_inputs(config, device)


def antithetic_times(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """t and T - 1 - t, as both official training loops draw them."""
    half = torch.randint(TIMESTEPS, (n // 2 + 1,), generator=generator, device=device)
    return torch.cat([half, TIMESTEPS - half - 1])[:n]


def denoising_losses(model: nn.Module, x0: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """Per-sample ||eps - eps_theta(x_t, t, c)||^2 summed over pixels."""
    return (noise - model(diffuse(x0, t, noise), t, class_labels=labels).sample).square().sum(dim=(1, 2, 3))


def diagonal_fisher(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, timesteps: int,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """SA's Fisher: mean over samples of (d/dtheta sum_t loss_t(x))^2, the sum over ``timesteps`` evenly
    spaced t scaled to all T (``fim.py``: every t, one noise draw each)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    t = torch.linspace(0, TIMESTEPS - 1, timesteps, device=images.device).round().long()
    scale = TIMESTEPS / timesteps
    for x, c in zip(images, labels, strict=True):
        noise = torch.randn((timesteps, *x.shape), generator=generator, device=x.device)
        loss = scale * denoising_losses(model, x.expand(timesteps, *x.shape), t, c.expand(timesteps), noise).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        for name, g in zip(params, grads, strict=True):
            fisher[name] += g.square() / len(images)
    return fisher


def saliency_mask(model: nn.Module, images: torch.Tensor, label: int, fraction: float, batch_size: int,
                  grad_clip: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """SalUn's mask: 1 on the ``fraction`` of parameters with the largest |gradient| of the forget
    class's denoising loss (summed over norm-clipped batch gradients), over all parameters together."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in range(0, len(images), batch_size):
        x0 = images[start:start + batch_size]
        t = antithetic_times(len(x0), generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        labels = torch.full((len(x0),), label, dtype=torch.long, device=x0.device)
        model.zero_grad(set_to_none=True)
        denoising_losses(model, x0, t, labels, noise).mean().backward()
        torch.nn.utils.clip_grad_norm_(params.values(), grad_clip)
        for name, p in params.items():
            total[name] += p.grad
    model.zero_grad(set_to_none=True)
    magnitudes = torch.cat([g.abs().flatten() for g in total.values()])
    keep = int(len(magnitudes) * fraction)
    order = torch.argsort(magnitudes, descending=True, stable=True)
    flat = torch.zeros_like(magnitudes)
    flat[order[:keep]] = 1.0
    masks, offset = {}, 0
    for name, g in total.items():
        masks[name] = flat[offset:offset + g.numel()].view_as(g)
        offset += g.numel()
    return masks


class DiffusionUnlearning:
    """Fine-tune a copy of the teacher with SA's or SalUn's objective; evaluate DDIM samples of its EMA."""

    main_metric = "forget_rate"
    higher_is_better = False
    selects_best = False  # the rates are test metrics: the last evaluation is the result

    def __init__(self, config: DiffusionUnlearningConfig, policy: DevicePolicy):
        from grp_workbench.harness.averaging import exponential_average

        self.config, self.device = config, policy.device
        teacher, self.classifier = load_inputs(config, self.device)
        self.teacher = teacher.eval().requires_grad_(False)
        self.model = copy.deepcopy(teacher).train().requires_grad_(True)
        self.anchor = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.ema = exponential_average(self.model, config.ema_decay)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        self.rng = torch.Generator(device=self.device).manual_seed(config.seed)
        self.prepared: dict[str, Any] | None = None  # SA: replay set and Fisher; SalUn: the saliency mask
        self.real: dict[str, torch.Tensor] | None = None

    # ---- what each method computes once, before its first step (kept in checkpoints) ----------------
    def _prepare(self) -> dict[str, Any]:
        c = self.config
        if c.method == "selective-amnesia":
            per_class = max(c.replay_per_class, c.fim_per_class)
            labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
            generator = torch.Generator().manual_seed(c.seed)
            images = (sample(self.teacher, labels, c.sample_steps, generator=generator) * 2 - 1).to(self.device)
            labels = labels.to(self.device)
            fim_index = torch.cat([torch.nonzero(labels == d).flatten()[:c.fim_per_class] for d in range(NUM_CLASSES)])
            fisher = diagonal_fisher(self.model, images[fim_index], labels[fim_index], c.fim_timesteps, self.rng)
            replay_index = torch.cat([torch.nonzero(labels == d).flatten()[:c.replay_per_class] for d in c.remaining])
            return {"replay_images": images[replay_index], "replay_labels": labels[replay_index], "fisher": fisher}
        real = self._real_images()
        return {"mask": saliency_mask(self.model, real["forget_images"], c.forget, c.mask_fraction, c.batch_size,
                                      c.grad_clip, self.rng)}

    def _real_images(self) -> dict[str, torch.Tensor]:
        """SalUn's real training images, split into the forgotten digit and the rest (read again on resume)."""
        if self.real is None:
            from grp_workbench.federated.classifier import classifier_split

            (images, labels), _ = classifier_split(self.config.data_dir)
            images, labels = (images * 2 - 1).to(self.device), labels.to(self.device)
            forget = labels == self.config.forget
            self.real = {"forget_images": images[forget], "remain_images": images[~forget],
                         "remain_labels": labels[~forget]}
        return self.real

    def update(self) -> dict[str, float]:
        if self.prepared is None:
            self.prepared = self._prepare()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = (self._selective_amnesia_loss() if self.config.method == "selective-amnesia"
                         else self._salun_loss())
        loss.backward()
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
        if self.config.method == "salun":  # masked after clipping, as the official loop
            for name, p in self.model.named_parameters():
                p.grad *= self.prepared["mask"][name]
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        return metrics

    def _batch(self, n_total: int) -> torch.Tensor:
        return torch.randint(n_total, (self.config.batch_size,), generator=self.rng, device=self.device)

    def _selective_amnesia_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        c, n, p = self.config, self.config.batch_size, self.prepared
        t = antithetic_times(n, self.rng, self.device)  # one t for both terms, as train_forget
        x_forget = torch.rand(n, 1, 28, 28, generator=self.rng, device=self.device) * 2 - 1
        forget_labels = torch.full((n,), c.forget, dtype=torch.long, device=self.device)
        forget = denoising_losses(self.model, x_forget, t, forget_labels, self._noise(n)).mean()
        index = self._batch(len(p["replay_labels"]))
        replay = denoising_losses(self.model, p["replay_images"][index], t, p["replay_labels"][index],
                                  self._noise(n)).mean()
        ewc = sum((p["fisher"][name] * (w - self.anchor[name]).square()).sum()
                  for name, w in self.model.named_parameters())
        loss = forget + c.sa_gamma * replay + c.sa_lambda * ewc
        return loss, {"loss": loss.item(), "forget_loss": forget.item(), "replay_loss": replay.item(),
                      "ewc": float(ewc.detach())}

    def _salun_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        c, n, p = self.config, self.config.batch_size, self._real_images()
        index = self._batch(len(p["remain_labels"]))
        labels = p["remain_labels"][index].clone()
        labels[torch.rand(n, generator=self.rng, device=self.device) < c.remain_cond_drop] = NULL_LABEL
        remain = denoising_losses(self.model, p["remain_images"][index], antithetic_times(n, self.rng, self.device),
                                  labels, self._noise(n)).mean()
        x_forget = p["forget_images"][self._batch(len(p["forget_images"]))]
        t = antithetic_times(n, self.rng, self.device)
        x_t = diffuse(x_forget, t, self._noise(n))
        forget_labels = torch.full((n,), c.forget, dtype=torch.long, device=self.device)
        with torch.no_grad():  # the random label's prediction of the CURRENT model is the target
            target = self.model(x_t, t, class_labels=(forget_labels + 1) % NUM_CLASSES).sample
        forget = (self.model(x_t, t, class_labels=forget_labels).sample - target).square().mean()
        loss = forget + c.salun_alpha * remain
        return loss, {"loss": loss.item(), "forget_loss": forget.item(), "remain_loss": remain.item()}

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, 1, 28, 28, generator=self.rng, device=self.device)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        c = self.config
        labels = torch.arange(NUM_CLASSES).repeat_interleave(c.eval_per_class)
        images = sample(self.ema.module.eval(), labels, c.sample_steps, generator=torch.Generator().manual_seed(1))
        # SA maps the forgotten digit to noise, SalUn to the next digit: the rate of (forget + 1) % 10 is
        # SalUn's "override"
        override = (c.forget + 1) % NUM_CLASSES if c.method == "salun" else None
        return conditional_unlearning_metrics(self.classifier, images, labels, c.forget, override)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.get_state(), "prepared": self.prepared}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.prepared = state["prepared"]


def load_unlearned_diffusion(run_dir: str, device: str | torch.device = "cpu") -> nn.Module:
    """The EMA network of a finished SA / SalUn run (what its evaluations sample)."""
    from grp_workbench.federated.generative.diffusion import load_diffusion
    from grp_workbench.harness.runs import RunDir

    run = RunDir(run_dir)
    state = run.last_algorithm_state("diffusion unlearning run", f"run `workbench federated unlearn diffusion "
                                     f"--run-dir {run_dir}` first.")
    model, _ = load_diffusion(run.header["config"]["teacher"], device)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")})
    return model.eval().requires_grad_(False)


def _task(config: DiffusionUnlearningConfig) -> str:
    return f"mnist-forget{config.forget}"


PRESETS: dict[str, dict[str, Any]] = {
    # SA's configs/cifar10_forget.yml; for SalUn pass --set total_steps=1000 (its config)
    "paper": {},
    # SFD's quick budget for every method: 400 steps of batch 32 (CPU), EMA 0.99; SA's Fisher on 10
    # samples per digit over 100 timesteps, replay of 50 samples per digit
    "quick": {"batch_size": 32, "total_steps": 400, "eval_every": 100, "checkpoint_every": 100, "log_every": 20,
              "ema_decay": 0.99, "replay_per_class": 50, "fim_per_class": 10, "fim_timesteps": 100},
    "tiny": {"batch_size": 4, "total_steps": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 2,
             "eval_per_class": 2, "sample_steps": 2, "replay_per_class": 2, "fim_per_class": 1, "fim_timesteps": 4},
}
SPEC = MethodSpec(name="diffusion-unlearning", config_cls=DiffusionUnlearningConfig, presets=PRESETS,
                  build=DiffusionUnlearning, task=_task, precisions=("fp32",), variant=lambda config: config.method)
