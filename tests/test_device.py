import pytest
import torch

from grp_workbench.harness.device import make_policy, resolve_device
from grp_workbench.harness.errors import WorkbenchError


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("grp_workbench.harness.device._mps_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr("grp_workbench.harness.device._mps_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_cuda_requested_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WorkbenchError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(WorkbenchError, match="not one of"):
        resolve_device("gpu")


def test_precision_policy(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert make_policy("cpu", "auto").precision == "fp32"  # CPU autocast only when asked for
    bf16 = make_policy("cpu", "bf16")
    with bf16.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with pytest.raises(WorkbenchError, match="fp16 is not supported on the CPU"):
        make_policy("cpu", "fp16")
    assert not make_policy("cpu", "fp32").grad_scaler().is_enabled()
