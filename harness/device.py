"""Device selection (cuda > mps > cpu) and the mixed-precision policy.

Methods receive a ``DevicePolicy`` and create tensors on ``policy.device`` and wrap forward passes
in ``policy.autocast()``; nothing else in the code base names a device, so a GPU run needs no
code change.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from grp_workbench.harness.errors import HarnessError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit accelerator that is absent is an error."""
    kind, _, index = spec.partition(":")
    if kind not in DEVICE_CHOICES:
        raise HarnessError(f"--device {spec!r} is not one of {', '.join(DEVICE_CHOICES)} (optionally cuda:N).")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
            raise HarnessError(
                f"--device {spec} was requested but CUDA is not available (torch {torch.__version__} is {build}"
                " or no GPU is visible). Use --device auto or --device cpu, or install a CUDA build of torch "
                "(README, section GPU: make test TORCH_SPEC=...)."
            )
        if index and int(index) >= torch.cuda.device_count():
            raise HarnessError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible; use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}."
            )
    if kind == "mps" and not _mps_available():
        raise HarnessError(f"--device {spec} was requested but MPS is not available; use --device auto or cpu.")
    return torch.device(spec)


@dataclass(frozen=True)
class DevicePolicy:
    """Where tensors live and which dtype autocast uses (``None`` = plain fp32)."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None

    @property
    def precision(self) -> str:
        names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return names[self.autocast_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes; a no-op under fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a pass-through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype is torch.float16)


def make_policy(device: str = "auto", precision: str = "auto") -> DevicePolicy:
    """``precision=auto`` means bf16 autocast on a GPU that supports it, fp32 everywhere else.

    CPU autocast is left to an explicit ``bf16`` request: on most CPUs it is slower than fp32.
    """
    if precision not in PRECISION_CHOICES:
        raise HarnessError(f"--precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}.")
    dev = resolve_device(device)
    if precision == "auto":
        use_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        return DevicePolicy(dev, torch.bfloat16 if use_bf16 else None)
    if precision == "fp16" and dev.type == "cpu":
        raise HarnessError("--precision fp16 is not supported on the CPU; use bf16 or fp32 there.")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return DevicePolicy(dev, dtype)


def describe(policy: DevicePolicy) -> dict[str, str]:
    """Device facts worth saving beside a run."""
    out = {"device": str(policy.device), "precision": policy.precision, "torch": torch.__version__}
    if policy.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(policy.device)
    return out
