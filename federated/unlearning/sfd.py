"""Score Forgetting Distillation: unlearn a class of a conditional diffusion model into a one-step generator.

Chen, Zhang, Zhou, "Score Forgetting Distillation: A Swift, Data-Free Method for Machine Unlearning
in Diffusion Models", ICLR 2025. Official code: github tqch/score-forgetting-distillation, ``DDPM/``
(on SiD, mingyuanzhou/SiD); file:line references below are to its default branch.

The algorithm (``runners/diffusion.py::train_sfd``, 398-790), one trainer step per iteration:

0. Three copies of the teacher's EMA network (``init_from_ema``): the frozen teacher eps_phi, the
   fake score network eps_psi and the generator G_theta (``:420-470``).
1. The one-step generator (``run_generator``, ``:544-556``): x_T' = sqrt(1 - abar_440) z, then
   x_g = x_T' / sqrt(abar_440) - sqrt(1/abar_440 - 1) G_theta(x_T', 440, c): one network evaluation
   from noise at the paper's initial step t_init = 440 (sigma 2.50) to an image.
2. Fake-score step (``:640-690``): with x_g detached, the denoising loss of eps_psi at t ~ U{38..711}
   on the generator's samples of remaining labels c (coefficient ``sg_remain_coef``) and of the
   forgotten label c_f (``sg_forget_coef``) (``sid_sg_loss_conditional``, losses.py:40-62: squared
   error summed over pixels, averaged over the batch); gradient values clipped to 1.0.
3. Generator step (``:692-752``): the SiD loss (``sid_g_loss_conditional``, losses.py:65-134) with
   p = f_phi(x_t, t, c_p), q = f_psi(x_t, t, c_q) the x0-predictions, omega = mean |p - x_g|
   (no gradient, >= 1e-5) and alpha = 1.2:
   L = sum_pixels (p - q) * ((p - x_g) - alpha (p - q)) / omega, batch mean; gradients reach theta
   through x_g and x_t = sqrt(abar_t) x_g + sqrt(1 - abar_t) eps in both networks' inputs.
   Remaining term: c_p = c_q = c (``g_remain_coef``). Forgetting term: the generator is conditioned on
   c_f, the fake network sees c_f, and the TEACHER sees the override label (``label_to_override``,
   config 1; or random != c_f, ``:719-723``) (``g_forget_coef``).
4. An EMA of the generator (``ema_rate`` 0.9999, ``:774``) is what is evaluated.

Data-free: no image is read after the teacher is trained. The official loop takes its remaining
labels from a data loader of the remaining classes (the label marginal, ``:642``); here they are
drawn uniformly over the nine remaining digits (MNIST's classes are near balanced; stated).

Defaults are ``configs/cifar10_sfd.yml``: alpha 1.2, t in [38, 712), t_init 440, coefficients 1 / 0.01
/ 1 / 0.01, override 1, Adam lr 1e-5 for both networks, betas (0, 0.999), eps 1e-8, gradient value
clip 1.0, batch 128, 50,000 iterations, generator EMA 0.9999. The ``quick`` preset scales this to a
CPU (stated in the preset and in benchmarks/diffusion_unlearning when that suite lands).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grp_workbench.federated import FederatedError
from grp_workbench.federated.generative.diffusion import NUM_CLASSES, alphas_cumprod, diffuse, predict_x0
from grp_workbench.federated.unlearning.metrics import check_forget_class
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec


@dataclass
class SFDConfig(TrainConfig):
    teacher: str = ""  # a `workbench federated train-diffusion` run directory (required)
    classifier: str = ""  # the evaluation classifier: a `workbench federated train-classifier` run (required)
    forget: int = 0  # the digit to forget
    override: str = "1"  # the teacher's label for the forgotten class: a digit, or "rand" (uniform over the others)
    alpha: float = 1.2  # SiD's alpha
    t_min: int = 38  # distillation times t ~ U{t_min, ..., t_max - 1}
    t_max: int = 712
    t_init: int = 440  # the generator's input noise level (sigma 2.50)
    sg_remain_coef: float = 1.0
    sg_forget_coef: float = 0.01
    g_remain_coef: float = 1.0
    g_forget_coef: float = 0.01
    fake_lr: float = 1e-5  # Adam, betas (0, 0.999), eps 1e-8
    generator_lr: float = 1e-5
    grad_clip: float = 1.0  # gradient VALUE clip, both networks
    batch_size: int = 128
    ema_decay: float = 0.9999  # of the generator; the EMA is evaluated
    eval_per_class: int = 50
    total_steps: int = 50_000
    eval_every: int = 5_000
    log_every: int = 50
    checkpoint_every: int = 1_000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_forget_class(self.forget)
        _ = self.override_label  # raises on a bad or self-defeating override
        if not 0 < self.t_min < self.t_max <= 1000 or not 0 < self.t_init < 1000:
            raise FederatedError(f"times out of range: need 0 < t_min ({self.t_min}) < t_max ({self.t_max}) <= 1000 "
                                 f"and 0 < t_init ({self.t_init}) < 1000.")

    @property
    def override_label(self) -> int | None:
        """The fixed override digit, or None for "rand"."""
        if self.override == "rand":
            return None
        try:
            label = int(self.override)
        except ValueError:
            raise FederatedError(f"override={self.override!r} must be a digit 0-9 or 'rand'.") from None
        if not 0 <= label < NUM_CLASSES:
            raise FederatedError(f"override={self.override!r} must be a digit 0-9 or 'rand'.")
        if label == self.forget:
            raise FederatedError(f"override={label} equals forget={self.forget}: the teacher would be asked for the "
                                 "class being forgotten. Choose another digit or 'rand'.")
        return label


# ---- the pieces ------------------------------------------------------------------------------------
def one_step_generate(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor, t_init: int) -> torch.Tensor:
    """x_g in [-1, 1] (unclipped) from noise at t_init in one evaluation (``run_generator``)."""
    abar = alphas_cumprod(z.device)[t_init]
    x_init = (1 - abar).sqrt() * z
    t = torch.full((len(z),), t_init, device=z.device, dtype=torch.long)
    eps = generator(x_init, t, class_labels=labels).sample
    return x_init / abar.sqrt() - (1 / abar - 1).sqrt() * eps


def denoising_loss(model: nn.Module, x0: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """||eps - eps_model(x_t, t, c)||^2 summed over pixels, batch mean (``sid_sg_loss_conditional``)."""
    return (noise - model(diffuse(x0, t, noise), t, class_labels=labels).sample).square().sum(dim=(1, 2, 3)).mean()


def sid_generator_loss(teacher_x0: torch.Tensor, fake_x0: torch.Tensor, x_g: torch.Tensor, alpha: float
                       ) -> torch.Tensor:
    """SiD's generator loss from the two x0-predictions p (teacher) and q (fake) and the sample x_g."""
    with torch.no_grad():
        omega = (teacher_x0 - x_g).abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-5)
    p, q = teacher_x0, fake_x0
    return ((p - q) * ((p - x_g) - alpha * (p - q)) / omega).sum(dim=(1, 2, 3)).mean()


def override_labels(forget: int, override: int | None, n: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """The teacher's labels for the forgotten class: the fixed override, or uniform over the other nine
    digits (the official ``randint(0, 9)`` with the forgotten digit mapped to 9)."""
    if override is not None:
        return torch.full((n,), override, dtype=torch.long, device=device)
    labels = torch.randint(0, NUM_CLASSES - 1, (n,), generator=generator, device=device)
    labels[labels == forget] = NUM_CLASSES - 1
    return labels


def remaining_labels(forget: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform over the nine digits other than ``forget``."""
    labels = torch.randint(0, NUM_CLASSES - 1, (n,), generator=generator, device=device)
    return labels + (labels >= forget).long()


# ---- the method ------------------------------------------------------------------------------------
class ScoreForgettingDistillation:
    main_metric = "forget_rate"
    higher_is_better = False
    selects_best = False  # the rates are test metrics: the last evaluation is the result

    def __init__(self, config: SFDConfig, policy: DevicePolicy):
        from grp_workbench.harness.averaging import exponential_average

        self.config, self.device = config, policy.device
        teacher, classifier = load_inputs(config, self.device)
        self.teacher = teacher.eval().requires_grad_(False)
        self.fake = copy.deepcopy(teacher).train().requires_grad_(True)
        self.generator = copy.deepcopy(teacher).train().requires_grad_(True)
        self.ema = exponential_average(self.generator, config.ema_decay)
        betas = (0.0, 0.999)
        self.fake_optimizer = torch.optim.Adam(self.fake.parameters(), lr=config.fake_lr, betas=betas, eps=1e-8)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.generator_lr, betas=betas,
                                                    eps=1e-8)
        self.classifier = classifier
        self.rng = torch.Generator(device=self.device).manual_seed(config.seed)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, 1, 28, 28, generator=self.rng, device=self.device)

    def _times(self, n: int) -> torch.Tensor:
        c = self.config
        return torch.randint(c.t_min, c.t_max, (n,), generator=self.rng, device=self.device)

    def update(self) -> dict[str, float]:
        c, n = self.config, self.config.batch_size
        labels = remaining_labels(c.forget, n, self.rng, self.device)
        forget_labels = torch.full((n,), c.forget, dtype=torch.long, device=self.device)
        metrics: dict[str, float] = {}
        # 1. the fake score network learns the generator's current distribution
        self.fake.train().requires_grad_(True)
        self.fake_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            x_g = one_step_generate(self.generator, self._noise(n), labels, c.t_init)
        loss = denoising_loss(self.fake, x_g, self._times(n), labels, self._noise(n))
        (c.sg_remain_coef * loss).backward()
        metrics["fake_remain_loss"] = loss.item()
        if c.sg_forget_coef > 0:
            with torch.no_grad():
                x_f = one_step_generate(self.generator, self._noise(n), forget_labels, c.t_init)
            loss = denoising_loss(self.fake, x_f, self._times(n), forget_labels, self._noise(n))
            (c.sg_forget_coef * loss).backward()
            metrics["fake_forget_loss"] = loss.item()
        torch.nn.utils.clip_grad_value_(self.fake.parameters(), c.grad_clip)
        self.fake_optimizer.step()
        # 2. the generator: SiD toward the teacher on remaining labels, toward the override for the forgotten
        self.fake.eval().requires_grad_(False)
        self.generator.train()
        self.generator_optimizer.zero_grad(set_to_none=True)
        x_g = one_step_generate(self.generator, self._noise(n), labels, c.t_init)
        loss = self._sid(x_g, labels, labels)
        (c.g_remain_coef * loss).backward()
        metrics["generator_remain_loss"] = loss.item()
        if c.g_forget_coef > 0:
            x_f = one_step_generate(self.generator, self._noise(n), forget_labels, c.t_init)
            teacher_labels = override_labels(c.forget, c.override_label, n, self.rng, self.device)
            loss = self._sid(x_f, teacher_labels, forget_labels)
            (c.g_forget_coef * loss).backward()
            metrics["generator_forget_loss"] = loss.item()
        torch.nn.utils.clip_grad_value_(self.generator.parameters(), c.grad_clip)
        self.generator_optimizer.step()
        self.ema.update_parameters(self.generator)
        return metrics

    def _sid(self, x_g: torch.Tensor, teacher_labels: torch.Tensor, fake_labels: torch.Tensor) -> torch.Tensor:
        t = self._times(len(x_g))
        x_t = diffuse(x_g, t, self._noise(len(x_g)))
        return sid_generator_loss(predict_x0(self.teacher, x_t, t, teacher_labels),
                                  predict_x0(self.fake, x_t, t, fake_labels), x_g, self.config.alpha)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seed: int = 1) -> torch.Tensor:
        """Images in [0, 1] from the generator's EMA, one network evaluation each."""
        model = self.ema.module.eval()
        z = torch.randn(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return ((one_step_generate(model, z, labels.to(self.device), self.config.t_init) + 1) / 2).clamp(0, 1).cpu()

    def evaluate(self) -> dict[str, float]:
        c = self.config
        labels = torch.arange(NUM_CLASSES).repeat_interleave(c.eval_per_class)
        images = self.sample(labels)
        return conditional_unlearning_metrics(self.classifier, images, labels, c.forget, c.override_label)

    def state_dict(self) -> dict[str, Any]:
        return {"fake": self.fake.state_dict(), "generator": self.generator.state_dict(), "ema": self.ema.state_dict(),
                "fake_optimizer": self.fake_optimizer.state_dict(),
                "generator_optimizer": self.generator_optimizer.state_dict(), "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fake.load_state_dict(state["fake"])
        self.generator.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.fake_optimizer.load_state_dict(state["fake_optimizer"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.rng.set_state(state["rng"])


def conditional_unlearning_metrics(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, forget: int,
                                   override: int | None) -> dict[str, float]:
    """forget_rate: share of samples conditioned on the forgotten digit that the classifier labels as it
    (unlearning accuracy = 1 - forget_rate); override_rate: of those, the share labelled the override
    digit; retained_acc: accuracy on samples of the other digits."""
    from grp_workbench.federated.unlearning.metrics import classify

    predicted, _ = classify(classifier, images)
    forgotten = labels == forget
    metrics = {"forget_rate": (predicted[forgotten] == forget).float().mean().item(),
               "retained_acc": (predicted[~forgotten] == labels[~forgotten]).float().mean().item()}
    if override is not None:
        metrics["override_rate"] = (predicted[forgotten] == override).float().mean().item()
    return metrics


def load_inputs(config: SFDConfig, device: str | torch.device) -> tuple[nn.Module, nn.Module]:
    """The teacher's EMA network and the evaluation classifier."""
    from grp_workbench.federated.generative.diffusion import load_diffusion

    if not config.teacher or not config.classifier:
        raise FederatedError("set --set teacher=<run dir> --set classifier=<run dir>: diffusion unlearning starts "
                             "from a `workbench federated train-diffusion` run, scored by a `train-classifier` run.")
    teacher, _ = load_diffusion(config.teacher, device)
    return teacher, _classifier(config.classifier).to(device)


@functools.lru_cache(maxsize=2)
def _classifier(run_dir: str) -> nn.Module:
    from grp_workbench.federated.attack import load_classifier

    return load_classifier(run_dir)


def _task(config: SFDConfig) -> str:
    return f"mnist-forget{config.forget}"


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # configs/cifar10_sfd.yml
    # CPU scale: 400 iterations of batch 32; the learning rates and forgetting coefficients of the SD
    # script (run_sfd.sh: all coefficients 1.0) at 10x the CIFAR rate, since 1e-5 moves nothing in 400 steps
    "quick": {"batch_size": 32, "total_steps": 400, "eval_every": 100, "checkpoint_every": 100, "log_every": 20,
              "fake_lr": 1e-4, "generator_lr": 1e-4, "sg_forget_coef": 1.0, "g_forget_coef": 1.0, "ema_decay": 0.99},
    "tiny": {"batch_size": 4, "total_steps": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 2,
             "eval_per_class": 2},
}
SPEC = MethodSpec(name="sfd", config_cls=SFDConfig, presets=PRESETS, build=ScoreForgettingDistillation, task=_task,
                  precisions=("fp32",))


def load_sfd_generator(run_dir: str, device: str | torch.device = "cpu") -> tuple[nn.Module, int]:
    """The EMA generator of an SFD run (what its evaluations sample) and its input step t_init."""
    from grp_workbench.federated.generative.diffusion import load_diffusion
    from grp_workbench.harness.runs import RunDir

    run = RunDir(run_dir)
    state = run.last_algorithm_state("SFD run", f"run `workbench federated unlearn sfd --run-dir {run_dir}` first.")
    config = run.header["config"]
    model, _ = load_diffusion(config["teacher"], device)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")})
    return model.eval().requires_grad_(False), int(config["t_init"])
