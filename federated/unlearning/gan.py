"""Adapt-then-Unlearn: forgetting a digit from a pre-trained GAN, and the baselines it is compared with.

Tiwary, Guha, Panda, Prathosh, "Adapt then Unlearn: Exploring Parameter Space Semantics for Unlearning
in Generative Adversarial Networks", TMLR 2025. Official code: github atriguha/Adapt_Unlearn (StyleGAN2,
rosinality fork); file:line references below are to its commit 96b7b80 / bd07a45 (stage 1:
``Negative_Adaptation/EWC_ADAPT_MNIST/``, stage 2: ``Unlearning/Unlearning_MNIST/``).

The algorithm, as one run of ``workbench federated unlearn gan --set method=el2``:

0. Negatives and positives. Samples of the pre-trained generator G_0 that the evaluation classifier
   labels as the class to forget are negatives; the others are positives (``FeedbackData_neg``: 200
   draws, ``stylegan2_ewc.py:538``; ``FeedbackData_pos``: 5,000 positives,
   ``train_different_losses.py:686``).
1. Stage 1, negative adaptation (``stylegan2_ewc.py``), K times with fresh negatives: copies of G_0 and
   D_0 are trained adversarially with the negatives as D's real data, G's loss being the
   non-saturating ``softplus(-D(G(z)))`` (``train_different_losses.py:93``) plus the EWC penalty
   ``(lambda/2) sum_i F_i (theta_i - theta0_i)^2`` (``model.py:683-719``), F the diagonal Fisher
   estimated ONCE at G_0 as the mean over 32 samples of the squared gradient of D's logit of each
   sample (``model.py:609-661``, ``stylegan2_ewc.py:142``). Result: K adapted parameter vectors
   theta_N^k that generate (mostly) the forgotten class.
2. Stage 2, unlearning (``train_different_losses.py``): from the ORIGINAL G_0 and D_0 (not the adapted
   ones), adversarial training with the positives as D's real data and the repulsion term added to
   G's loss (``:337-345``):
   ``nl2``: L_adv - gamma*d;  ``el2``: L_adv + 100*exp(-gamma*d);  ``il2``: L_adv + 1/(gamma*d).
   d is ``calc_difference_param_new`` (``:139-207``): for every parameter tensor p and adapted model
   k the mean squared difference mean((theta_N^k[p] - theta[p])^2) (``:189``), summed over k, divided
   by the number of tensors P and multiplied by K/2 (``:203``, ``value/2*len(models)``).

Baselines on the same G_0, positives and step budget (``method=``): ``finetune`` (stage 2 with gamma =
0), ``ewc`` (stage 2 with the EWC penalty of stage 1 instead of repulsion), ``extrapolation`` (stage 1,
then theta_0 + t*(theta_0 - mean_k theta_N^k), no training; ``unlearn_extrapolation.py``); the
retrain-from-scratch reference is ``workbench federated train-gan --set exclude=D``.

Departures, and why:

* The generator is the workbench's DCGAN (0.8M parameters, 28x28, federated/generative/dcgan.py), not
  StyleGAN2 at 32x32, so StyleGAN2's regularisers (lazy R1 every 16 steps, path-length every 4, style
  mixing 0.9, EMA generator) are not used: the DCGAN was pre-trained without them, and the stages fine-
  tune it with the loss and optimizer it was trained with (Adam 2e-4, betas (0.5, 0.999), states
  restored from the pre-training checkpoint as the official code restores StyleGAN2's).
* EWC covers every generator parameter (the official code: ``generator.convs`` only, StyleGAN2's
  synthesis convolutions; the DCGAN has no mapping network to exclude). The Fisher is divided by its
  mean over all parameters, so ``ewc_weight`` is the weight of a mean-1 Fisher: lambda = 5e8 of the
  official code is tied to StyleGAN2's gradient scale (``model.py:407``) and means nothing here.
  Default 10, chosen on the dev seed 100 (not a benchmark seed), forget 1, quick preset, one adapted
  model: the share of the forgotten digit among the adapted model's samples was 0.21 at lambda 100
  (EWC 11 vs adversarial loss 5.9 at the end: adaptation held back), 0.76 at 10, 0.89 at 1 (the
  pre-trained GAN: 0.089). 10 keeps the penalty active while the adapted models do become
  generators of the forgotten digit, which is what stage 1 is for.
* IL2: the issue and the paper write 1/(gamma*d); the official line ``1/(val*val_factor)`` with
  ``val_factor = 1/gamma`` (``:335, :340``) is gamma/d. We follow the paper's form, so the code's gamma
  is our 1/gamma.
* d follows the code including its factor K/2 (probably meant 1/(2K), an average over models): that
  factor only rescales gamma, and keeping it keeps the code's gamma meaning the same here.
* Extrapolation uses the mean of the K adapted models as theta_N (the official script takes one), on
  parameters only; BatchNorm running statistics stay G_0's (extrapolating a variance can make it
  negative).
* Budgets (``paper`` preset = the MNIST run files: K = 5, 2,001 adaptation and 1,001 unlearning steps of
  batch 16, gamma 1 with ``exp``): the ``quick`` preset scales the steps to a CPU (stated in
  benchmarks/gan_unlearning).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grp_workbench.federated import FederatedError
from grp_workbench.federated.unlearning.metrics import (
    check_forget_class,
    classify,
    frechet_distance,
    label_shares,
    pul,
    retained_balance,
)
from grp_workbench.harness.config import TrainConfig
from grp_workbench.harness.device import DevicePolicy
from grp_workbench.harness.trainer import MethodSpec

METHODS = ("finetune", "ewc", "extrapolation", "nl2", "il2", "el2")
ADAPTING = ("extrapolation", "nl2", "il2", "el2")  # methods that need stage 1
REPULSIONS = ("nl2", "il2", "el2")
EVAL_LATENT_SEED = 12_345  # the fixed latents of every evaluation: PUL compares the same z before and after


@dataclass
class GanUnlearningConfig(TrainConfig):
    gan: str = ""  # the pre-trained GAN: a `workbench federated train-gan` run directory (required)
    classifier: str = ""  # the evaluation classifier: a `workbench federated train-classifier` run directory (required)
    retrained: str = ""  # optional: a train-gan run with --set exclude=<forget>; adds ret_fid to evaluations
    data_dir: str | None = None  # MNIST IDX folder (the held-out real images of the FID)
    forget: int = 1  # the digit to forget (the paper's MNIST classes: 1, 4, 8)
    method: str = "el2"  # el2 | nl2 | il2 (Adapt-then-Unlearn) | finetune | ewc | extrapolation (baselines)
    adapted_models: int = 5  # K, stage-1 models (official MNIST run_file.sh: 5)
    adapt_steps: int = 2_001  # stage-1 steps per adapted model (run_file.sh --iter 2001)
    negative_draws: int = 2_000  # samples of G_0 drawn per adapted model; those labelled `forget` are its data
    positives: int = 5_000  # positive samples of G_0, stage 2's real data (train_different_losses.py:686)
    unlearn_steps: int = 1_001  # stage-2 steps (run_file.sh --iter 1001)
    batch_size: int = 16  # both stages (--batch 16)
    lr: float = 2e-3  # Adam for G and D in both stages: the official --lr 0.002; betas (0.5, 0.999), the DCGAN's
    ewc_weight: float = 10.0  # lambda on the mean-1 Fisher (see the module docstring)
    fisher_samples: int = 32  # estimate_fisher(sample_size=32)
    gamma: float = 1.0  # repulsion strength (run_file.sh: --gamma 1 --loss_type exp)
    extrapolation_t: float = 1.0  # theta_0 + t (theta_0 - theta_N)
    eval_samples: int = 5_000  # fixed latents for PUL / FID (same count for every model)
    total_steps: int = 0  # derived, never set: K * adapt_steps (methods with stage 1) + unlearn_steps
    eval_every: int = 250
    log_every: int = 50
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FederatedError(f"method={self.method!r} is not one of {', '.join(METHODS)}.")
        check_forget_class(self.forget)
        for name in ("adapted_models", "adapt_steps", "negative_draws", "positives", "batch_size", "fisher_samples",
                     "eval_samples"):
            if getattr(self, name) <= 0:
                raise FederatedError(f"{name}={getattr(self, name)} must be positive.")
        if self.unlearn_steps < 0 or (self.method != "extrapolation" and self.unlearn_steps == 0):
            raise FederatedError(f"unlearn_steps={self.unlearn_steps} must be positive for method={self.method}.")
        if self.method in REPULSIONS and self.gamma <= 0:
            raise FederatedError(f"gamma={self.gamma} must be positive for the {self.method} repulsion.")
        self.total_steps = self.adapt_total + self.unlearn_total  # always derived: set the stage lengths
        super().__post_init__()

    @property
    def adapt_total(self) -> int:
        return self.adapted_models * self.adapt_steps if self.method in ADAPTING else 0

    @property
    def unlearn_total(self) -> int:
        return 0 if self.method == "extrapolation" else self.unlearn_steps


# ---- the pieces of the algorithm ------------------------------------------------------------------
def discriminator_loss(generator: nn.Module, discriminator: nn.Module, real: torch.Tensor, z: torch.Tensor
                       ) -> torch.Tensor:
    """D's logistic loss on real images and G(z) (official ``d_logistic_loss``, ``:76``)."""
    with torch.no_grad():
        fake = generator(z)
    return F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake)).mean()


def generator_adversarial_loss(generator: nn.Module, discriminator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """G's non-saturating loss softplus(-D(G(z))) (official ``g_nonsaturating_loss``, ``:93``)."""
    return F.softplus(-discriminator(generator(z))).mean()


def estimate_fisher(generator: nn.Module, discriminator: nn.Module, z: torch.Tensor) -> list[torch.Tensor]:
    """Diagonal Fisher of G's parameters: the mean over samples of the squared gradient of D's logit of
    each sample, D's logit standing for the log-likelihood (``model.py:609-661``)."""
    params = [p for p in generator.parameters() if p.requires_grad]
    logits = discriminator(generator(z))
    squares = [torch.zeros_like(p) for p in params]
    for i in range(len(logits)):
        grads = torch.autograd.grad(logits[i], params, retain_graph=i < len(logits) - 1)
        for square, g in zip(squares, grads):
            square += g.detach() ** 2
    return [s / len(logits) for s in squares]


def normalised(fisher: list[torch.Tensor]) -> list[torch.Tensor]:
    """The Fisher divided by its mean over every parameter (see the module docstring)."""
    total = sum(f.sum() for f in fisher)
    count = sum(f.numel() for f in fisher)
    mean = (total / count).clamp_min(1e-30)
    return [f / mean for f in fisher]


def ewc_penalty(params: list[torch.Tensor], anchor: list[torch.Tensor], fisher: list[torch.Tensor],
                weight: float) -> torch.Tensor:
    """(lambda/2) sum_i F_i (theta_i - theta0_i)^2 (``model.py:717-719``)."""
    return weight / 2 * sum((f * (p - a) ** 2).sum() for p, a, f in zip(params, anchor, fisher))


def parameter_distance(params: list[torch.Tensor], adapted: list[list[torch.Tensor]]) -> torch.Tensor:
    """d of ``calc_difference_param_new``: per tensor, the mean squared difference to each adapted model,
    summed over models, averaged over tensors, times K/2 (the code's factor, kept)."""
    k = len(adapted)
    per_tensor = [sum(F.mse_loss(p, model[i]) for model in adapted) for i, p in enumerate(params)]
    return sum(per_tensor) / len(params) * k / 2


def repulsion(method: str, d: torch.Tensor, gamma: float) -> torch.Tensor:
    """The term added to G's loss, decreasing as G moves away from the adapted models."""
    if method == "nl2":
        return -gamma * d
    if method == "el2":
        return 100 * torch.exp(-gamma * d)
    if method == "il2":
        return 1 / (gamma * d)
    raise FederatedError(f"no repulsion named {method!r}; choose {', '.join(REPULSIONS)}.")


def extrapolate(original: list[torch.Tensor], adapted: list[list[torch.Tensor]], t: float) -> list[torch.Tensor]:
    """theta_0 + t (theta_0 - theta_N), theta_N the mean of the adapted models."""
    mean = [torch.stack(ps).mean(0) for ps in zip(*adapted)]
    return [p + t * (p - m) for p, m in zip(original, mean)]


@torch.no_grad()
def sample(generator: nn.Module, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Images of ``z`` from ``generator`` in eval mode (BatchNorm running statistics)."""
    was_training = generator.training
    generator.eval()
    images = torch.cat([generator(z[i:i + batch_size]) for i in range(0, len(z), batch_size)])
    generator.train(was_training)
    return images


def split_by_class(generator: nn.Module, classifier: nn.Module, forget: int, n: int, rng: torch.Generator,
                   z_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(negatives, positives) among ``n`` samples of ``generator``, by the classifier's label."""
    device = next(generator.parameters()).device
    images = sample(generator, torch.randn(n, z_dim, generator=rng, device=device))
    labels, _ = classify(classifier, images)
    is_negative = (labels == forget).to(images.device)
    return images[is_negative], images[~is_negative]


# ---- the evaluation every model gets ----------------------------------------------------------------
@dataclass
class UnlearningReference:
    """What every generator of one (forget class, pre-trained GAN) is scored against."""

    classifier: nn.Module
    forget: int
    latents: torch.Tensor  # the fixed evaluation latents
    original_labels: torch.Tensor  # the classifier's labels of G_0's samples of those latents
    real_features: torch.Tensor  # held-out real images of the retained classes

    def score(self, generator: nn.Module, retrained_features: torch.Tensor | None = None) -> dict[str, float]:
        images = sample(generator, self.latents.to(next(generator.parameters()).device))
        labels, features = classify(self.classifier, images)
        shares = label_shares(labels)
        metrics = {"pul": pul(self.original_labels, labels, self.forget),
                   "fid": frechet_distance(features, self.real_features),
                   "retained_balance": retained_balance(labels, self.forget),
                   "forget_share": shares[self.forget],
                   **{f"share_{digit}": share for digit, share in enumerate(shares)}}
        if retrained_features is not None:
            metrics["ret_fid"] = frechet_distance(features, retrained_features)
        return metrics

    def features(self, generator: nn.Module) -> torch.Tensor:
        return classify(self.classifier, sample(generator, self.latents.to(next(generator.parameters()).device)))[1]


@functools.lru_cache(maxsize=8)
def unlearning_reference(gan: str, classifier: str, forget: int, eval_samples: int, data_dir: str | None = None
                         ) -> UnlearningReference:
    """The reference of a pre-trained GAN run and classifier run (cached per process)."""
    from grp_workbench.federated.attack import load_classifier
    from grp_workbench.federated.classifier import classifier_split
    from grp_workbench.federated.generative.dcgan import load_generator

    evaluator = load_classifier(classifier)
    generator = load_generator(gan)
    latents = torch.randn(eval_samples, generator.z_dim, generator=torch.Generator().manual_seed(EVAL_LATENT_SEED))
    original_labels, _ = classify(evaluator, sample(generator, latents))
    _, (real_images, real_labels) = classifier_split(data_dir)
    _, real_features = classify(evaluator, real_images[real_labels != forget])
    return UnlearningReference(evaluator, forget, latents, original_labels, real_features)


# what unlearning reads from the pre-trained GAN's last checkpoint: the official code starts every phase
# from the pre-training optimizer states too (references/unlearning.md, Adapt-then-Unlearn item 4)
PRETRAINED_STATE = ("generator", "discriminator", "opt_g", "opt_d")


@dataclass
class UnlearningInputs:
    generator: nn.Module  # G_0, frozen, eval mode, with a ``z_dim`` attribute
    discriminator: nn.Module  # D_0, frozen, eval mode
    optimizer_states: tuple[dict[str, Any], dict[str, Any]]  # G's and D's Adam states at the end of pre-training
    reference: UnlearningReference
    retrained_features: torch.Tensor | None  # classifier features of the retrained GAN's samples (Ret-FD)


def load_inputs(config: GanUnlearningConfig, device: str | torch.device) -> UnlearningInputs:
    """The pre-trained GAN, its optimizer states, the evaluation reference and the retrained GAN's
    features, read from the run directories the config names."""
    from grp_workbench.federated.generative.dcgan import load_gan

    for key in ("gan", "classifier"):
        if not getattr(config, key):
            raise FederatedError(f"set --set {key}=<run dir>: unlearning needs the pre-trained GAN (workbench "
                                 "federated train-gan) and the evaluation classifier (workbench federated "
                                 "train-classifier).")
    reference = unlearning_reference(config.gan, config.classifier, config.forget, config.eval_samples,
                                     config.data_dir)
    generator, discriminator, _ = load_gan(config.gan, device)
    state = _gan_state(config.gan)
    retrained = None
    if config.retrained:
        retrained_g, _, retrained_config = load_gan(config.retrained, device)
        if retrained_config.get("exclude") != config.forget:
            raise FederatedError(f"retrained={config.retrained} was trained with exclude="
                                 f"{retrained_config.get('exclude')}, not without digit {config.forget}; pass the "
                                 f"train-gan run made with --set exclude={config.forget}.")
        retrained = reference.features(retrained_g)
    missing = [key for key in PRETRAINED_STATE if key not in state]
    if missing:
        raise FederatedError(f"gan={config.gan}: its last checkpoint has no {', '.join(missing)}; unlearning "
                             "starts from the pre-trained GAN's optimizer states as the official code does, so "
                             "pass the full train-gan run, not a copy with the weights only.")
    return UnlearningInputs(generator, discriminator, (state["opt_g"], state["opt_d"]), reference, retrained)


# ---- the method, through the harness trainer --------------------------------------------------------
class GanUnlearning:
    """Stage 1 (K adapted models, for the methods that need them), then stage 2; one trainer step is one
    adversarial update of whichever stage runs."""

    main_metric = "pul"
    higher_is_better = True
    selects_best = False  # PUL and FID are test metrics: the last evaluation is the result

    def __init__(self, config: GanUnlearningConfig, policy: DevicePolicy):
        self.config, self.device = config, policy.device
        inputs = load_inputs(config, self.device)
        self.reference = inputs.reference
        self.classifier = inputs.reference.classifier.to(self.device)
        self.original_g, self.original_d = inputs.generator, inputs.discriminator
        self.z_dim = inputs.generator.z_dim
        self.pretrain_optimizers = inputs.optimizer_states
        self.anchor = [p.detach().clone() for p in self.original_g.parameters()]
        self.rng = torch.Generator(device=self.device).manual_seed(config.seed)
        # the Fisher at G_0 is estimated once, before any update (stylegan2_ewc.py:142)
        trainable_g = self._fresh_pair()[0]
        fisher_z = torch.randn(config.fisher_samples, self.z_dim, generator=self.rng, device=self.device)
        self.fisher = normalised(estimate_fisher(trainable_g, self.original_d, fisher_z))
        self.adapted: list[list[torch.Tensor]] = []  # theta_N^k of finished stage-1 models (parameters)
        self.adapted_shares: list[float] = []  # the forgotten digit's share among each one's samples
        self.step = 0
        self.pair: tuple[nn.Module, nn.Module] | None = None  # the (G, D) being trained now
        self.optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer] | None = None
        self.data: torch.Tensor | None = None  # D's real data of the current phase
        self.retrained_features = inputs.retrained_features

    # -- phases
    def _fresh_pair(self) -> tuple[nn.Module, nn.Module]:
        g, d = copy.deepcopy(self.original_g), copy.deepcopy(self.original_d)
        return g.train().requires_grad_(True), d.train().requires_grad_(True)

    def _start_phase(self) -> None:
        """A new stage-1 model (fresh negatives) or stage 2 (positives), from G_0 and D_0 each time."""
        c = self.config
        self.pair = self._fresh_pair()
        betas = (0.5, 0.999)
        self.optimizers = (torch.optim.Adam(self.pair[0].parameters(), lr=c.lr, betas=betas),
                           torch.optim.Adam(self.pair[1].parameters(), lr=c.lr, betas=betas))
        for optimizer, saved in zip(self.optimizers, self.pretrain_optimizers):
            optimizer.load_state_dict(saved)
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = c.lr, betas
        # negatives / positives are redrawn from a generator seeded by (seed, phase), so a checkpoint
        # need not store them and a resumed run sees the same data
        phase = len(self.adapted) if self.step < c.adapt_total else c.adapted_models
        rng = torch.Generator(device=self.device).manual_seed(c.seed * 1_000 + phase)
        if self.step < c.adapt_total:
            negatives, _ = split_by_class(self.original_g, self.classifier, c.forget, c.negative_draws, rng, self.z_dim)
            if len(negatives) < 2:
                raise FederatedError(f"{len(negatives)} of {c.negative_draws} samples of the GAN are labelled "
                                     f"{c.forget}; raise negative_draws.")
            self.data = negatives
        else:
            positives: list[torch.Tensor] = []
            while sum(len(p) for p in positives) < c.positives:
                positives.append(split_by_class(self.original_g, self.classifier, c.forget, c.positives, rng,
                                                self.z_dim)[1])
            self.data = torch.cat(positives)[:c.positives]
            if c.method == "extrapolation":
                with torch.no_grad():
                    for p, value in zip(self.pair[0].parameters(),
                                        extrapolate(self.anchor, self.adapted, c.extrapolation_t)):
                        p.copy_(value)

    def _end_adaptation_model(self) -> None:
        self.adapted.append([p.detach().clone() for p in self.pair[0].parameters()])
        # measured once, when the model is done: how far stage 1 moved it toward the forgotten class
        labels, _ = classify(self.classifier, sample(self.pair[0], self.reference.latents[:1000].to(self.device)))
        self.adapted_shares.append(float((labels == self.config.forget).float().mean()))
        self.pair = self.optimizers = self.data = None

    def update(self) -> dict[str, float]:
        c = self.config
        if self.pair is None:
            self._start_phase()
        stage1 = self.step < c.adapt_total
        if not stage1 and c.method == "extrapolation":
            raise FederatedError("extrapolation has no stage-2 steps")  # total_steps excludes them
        g, d = self.pair
        opt_g, opt_d = self.optimizers
        n = c.batch_size
        real = self.data[torch.randint(len(self.data), (n,), generator=self.rng, device=self.device)]
        z_d, z_g = (torch.randn(n, self.z_dim, generator=self.rng, device=self.device) for _ in range(2))
        d_loss = discriminator_loss(g, d, real, z_d)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_adv = generator_adversarial_loss(g, d, z_g)  # against the updated D, as the official loop
        metrics = {"d_loss": d_loss.item(), "g_adv": g_adv.item()}
        params = list(g.parameters())
        if stage1 or c.method == "ewc":
            term = ewc_penalty(params, self.anchor, self.fisher, c.ewc_weight)
            metrics["ewc"] = term.item()
        elif c.method in REPULSIONS:
            distance = parameter_distance(params, self.adapted)
            term = repulsion(c.method, distance, c.gamma)
            metrics.update(distance=distance.item(), repulsion=term.item())
        else:
            term = torch.zeros((), device=self.device)
        opt_g.zero_grad(set_to_none=True)
        (g_adv + term).backward()
        opt_g.step()
        self.step += 1
        metrics["stage"] = 1.0 if stage1 else 2.0
        if stage1 and self.step % c.adapt_steps == 0:
            self._end_adaptation_model()
        if self.step == c.adapt_total and c.method == "extrapolation":
            self._start_phase()  # the extrapolated generator is the result
        return metrics

    # -- results
    def unlearned_generator(self) -> nn.Module:
        """The generator the run has made so far (G_0 during stage 1)."""
        c = self.config
        if self.step >= c.adapt_total and self.pair is not None:
            return self.pair[0]
        return self.original_g

    def evaluate(self) -> dict[str, float]:
        metrics = self.reference.score(self.unlearned_generator(), self.retrained_features)
        if self.adapted_shares:
            metrics["adapted_forget_share"] = sum(self.adapted_shares) / len(self.adapted_shares)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step, "adapted": self.adapted, "adapted_shares": self.adapted_shares,
                                 "rng": self.rng.get_state()}
        if self.pair is not None:
            state["pair"] = [m.state_dict() for m in self.pair]
            state["optimizers"] = [o.state_dict() for o in self.optimizers]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.adapted = state["step"], [[p.to(self.device) for p in ps] for ps in state["adapted"]]
        self.adapted_shares = list(state.get("adapted_shares", []))  # absent from checkpoints before 2026-12-01
        self.rng.set_state(state["rng"])
        self.pair = self.optimizers = self.data = None
        if "pair" in state:
            rng_state = self.rng.get_state()
            self._start_phase()  # the phase's data (redrawn from its own seed) and fresh modules
            self.rng.set_state(rng_state)
            for module, saved in zip(self.pair, state["pair"]):
                module.load_state_dict(saved)
            for optimizer, saved in zip(self.optimizers, state["optimizers"]):
                optimizer.load_state_dict(saved)


@functools.lru_cache(maxsize=4)
def _gan_state(run_dir: str) -> dict[str, Any]:
    from grp_workbench.harness.runs import RunDir

    return RunDir(run_dir).last_algorithm_state("trained GAN", f"train one with `workbench federated train-gan "
                                                               f"--run-dir {run_dir}`.")


def load_unlearned_generator(run_dir: str, device: str | torch.device = "cpu") -> nn.Module:
    """The generator an unlearning run ended with (its last checkpoint), in eval mode."""
    from grp_workbench.harness.config import config_from_dict
    from grp_workbench.harness.device import make_policy
    from grp_workbench.harness.runs import RunDir

    run = RunDir(run_dir)
    config = config_from_dict(GanUnlearningConfig, run.header["config"])
    state = run.last_algorithm_state("unlearning run", f"run `workbench federated unlearn gan --run-dir {run_dir}`.")
    algorithm = GanUnlearning(config, make_policy(str(device), "fp32"))
    algorithm.load_state_dict(state)
    return copy.deepcopy(algorithm.unlearned_generator()).eval().requires_grad_(False)


def _task(config: GanUnlearningConfig) -> str:
    return f"mnist-forget{config.forget}"


PRESETS: dict[str, dict[str, Any]] = {
    # the official MNIST run files (K = 5, 2,001 + 1,001 steps of batch 16)
    "paper": {},
    # CPU scale (benchmarks/gan_unlearning): K = 5 adapted models of 150 steps, 600 unlearning steps
    "quick": {"adapt_steps": 150, "unlearn_steps": 600, "eval_every": 200, "checkpoint_every": 200},
    "tiny": {"adapted_models": 2, "adapt_steps": 5, "unlearn_steps": 10, "negative_draws": 400, "positives": 200,
             "eval_samples": 400, "fisher_samples": 4, "eval_every": 10, "log_every": 5, "checkpoint_every": 5},
}
SPEC = MethodSpec(name="gan-unlearning", config_cls=GanUnlearningConfig, presets=PRESETS, build=GanUnlearning,
                  task=_task, precisions=("fp32",), variant=lambda config: config.method,
                  preset_costs={"paper": "about 15 min on 2 CPU cores", "quick": "about 1-2 min on 2 CPU cores"})
