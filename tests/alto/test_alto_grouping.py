"""paper_defaults and the no-weight-decay grouping helper."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from alto import ALTO, paper_defaults, param_groups


@pytest.mark.parametrize(
    ("batch", "alpha", "b1"),
    [(1, 0.5, 0.01), (1023, 0.5, 0.01), (1024, -5.0, 0.99), (4096, -5.0, 0.99)],
)
def test_paper_defaults_by_batch_size(batch: int, alpha: float, b1: float) -> None:
    d = paper_defaults(batch)
    assert d == {"alpha": alpha, "betas": (b1, 0.9, 0.99), "eps": 1e-6, "weight_decay": 1e-4}
    ALTO([torch.nn.Parameter(torch.ones(2))], lr=1e-3, **d)  # always valid ALTO arguments


class RMSNormLike(torch.nn.Module):
    """A norm defined outside torch (as Megatron's are): recognised by its class name."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.fc = torch.nn.Linear(4, 4)
        self.ln = torch.nn.LayerNorm(4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.rms = RMSNormLike(4)
        self.head = torch.nn.Linear(4, 2, bias=False)
        self.frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)


def ids(ps) -> set[int]:
    return {id(p) for p in ps}


def test_norms_and_biases_go_to_the_no_decay_group() -> None:
    net = Net()
    groups = param_groups(net, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decay = ids([net.emb.weight, net.fc.weight, net.head.weight])
    plain = ids(
        [net.fc.bias, net.ln.weight, net.ln.bias, net.bn.weight, net.bn.bias, net.rms.weight]
    )
    assert ids(groups[0]["params"]) == decay
    assert ids(groups[1]["params"]) == plain
    assert id(net.frozen) not in decay | plain


def test_no_decay_choices() -> None:
    net = Net()
    only_norm = param_groups(net, no_decay=("norm",))
    assert id(net.fc.bias) in ids(only_norm[0]["params"])
    everything = param_groups(net, no_decay=())
    assert len(everything) == 1 and len(everything[0]["params"]) == 9


def test_import_alto_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, alto; from alto import ALTO, E, Lamb; "
        "bad = [m for m in ('ray', 'fastapi', 'megatron', 'triton', 'alto.fused') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
