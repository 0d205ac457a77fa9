"""State layout, checkpoints, and E's contract with its base optimizer."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from alto import ALTO, E, Lamb, param_groups


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).to(dtype)


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(123)
    return [
        (torch.randn(16, 6, generator=gen), torch.randn(16, 1, generator=gen)) for _ in range(n)
    ]


def train(model, opt, data) -> None:
    for x, y in data:
        opt.zero_grad()
        loss = ((model(x.to(next(model.parameters()).dtype)) - y) ** 2).mean()
        loss.backward()
        opt.step()


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


OPTIMIZERS = {
    "alto_foreach": lambda m: ALTO(param_groups(m), lr=1e-2),
    "alto_single": lambda m: ALTO(param_groups(m), lr=1e-2, foreach=False),
    "lamb": lambda m: Lamb(param_groups(m), lr=1e-2),
    "e_adamw": lambda m: E(torch.optim.AdamW(param_groups(m), lr=1e-2), alpha=-5.0, beta=0.99),
    "e_sgd": lambda m: E(torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9), alpha=0.5),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_resumes_exactly(name: str) -> None:
    data = batches(10)
    ref_model = tiny_model()
    ref_opt = OPTIMIZERS[name](ref_model)
    train(ref_model, ref_opt, data)

    model = tiny_model()
    opt = OPTIMIZERS[name](model)
    train(model, opt, data[:5])
    saved_model, saved_opt = roundtrip(model.state_dict()), roundtrip(opt.state_dict())

    fresh_model = tiny_model(seed=99)
    fresh_model.load_state_dict(saved_model)
    fresh_opt = OPTIMIZERS[name](fresh_model)
    fresh_opt.load_state_dict(saved_opt)
    train(fresh_model, fresh_opt, data[5:])
    for a, b in zip(ref_model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)


def test_e_state_dict_carries_its_buffers_and_the_base_state() -> None:
    model = tiny_model()
    opt = OPTIMIZERS["e_adamw"](model)
    train(model, opt, batches(2))
    sd = opt.state_dict()
    assert sd["e"] == {"alpha": -5.0, "beta": 0.99}
    for entry in sd["state"].values():
        assert set(entry) == {"step", "exp_avg", "exp_avg_sq", "diff_carry"}
    # The base's own state dict is not modified by E.state_dict().
    for st in opt.base.state.values():
        assert "diff_carry" not in st


def test_alto_keeps_exactly_three_full_size_tensors_per_parameter() -> None:
    model = tiny_model()
    opt = ALTO(param_groups(model))
    train(model, opt, batches(2))
    for p in model.parameters():
        st = opt.state[p]
        assert set(st) == {"step", "exp_avg", "exp_avg_sq", "diff_carry"}
        full = [v for v in st.values() if torch.is_tensor(v) and v.shape == p.shape]
        assert len(full) == 3
        assert st["step"].shape == () and st["step"].dtype == torch.float32
        assert st["step"].device.type == "cpu" and float(st["step"]) == 2.0
    lamb = Lamb(model.parameters())
    train(model, lamb, batches(1))
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in lamb.state.values())


def test_e_keeps_one_buffer_per_parameter() -> None:
    model = tiny_model()
    opt = E(torch.optim.SGD(model.parameters(), lr=0.1), alpha=0.5, beta=0.5)
    train(model, opt, batches(2))
    assert all(set(st) == {"diff_carry"} for st in opt.state.values())
    assert len(opt.state) == len(list(model.parameters()))


def test_bf16_states_stay_fp32_through_load_state_dict() -> None:
    model = tiny_model(dtype=torch.bfloat16)
    opt = ALTO(param_groups(model), lr=1e-2)
    train(model, opt, batches(2))
    fresh = ALTO(param_groups(model), lr=1e-2)
    fresh.load_state_dict(roundtrip(opt.state_dict()))
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "diff_carry"):
            assert fresh.state[p][key].dtype == torch.float32
            assert torch.equal(fresh.state[p][key], opt.state[p][key])
        assert fresh.state[p]["step"].device.type == "cpu"


def test_e_restores_the_callers_gradients() -> None:
    model = tiny_model()
    opt = E(torch.optim.AdamW(model.parameters(), lr=1e-2), alpha=-5.0)
    data = batches(3)
    for x, y in data:
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        before = {p: (p.grad, p.grad.clone()) for p in model.parameters()}
        opt.step()
        for p in model.parameters():
            obj, values = before[p]
            assert p.grad is obj and torch.equal(p.grad, values)


def test_e_shares_param_groups_with_schedulers_and_add_param_group() -> None:
    model = tiny_model()
    base = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt = E(base, alpha=0.5, beta=0.1)
    assert opt.param_groups is base.param_groups and opt.defaults is base.defaults
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, batches(1))
    sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)

    extra = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra], "lr": 0.01})
    assert len(base.param_groups) == 2 and base.param_groups[1]["params"][0] is extra
    extra.grad = torch.ones(3)
    opt.step()
    assert "diff_carry" in opt.state[extra] and extra in base.state
    assert not torch.equal(extra.detach(), torch.ones(3))

    # Loading a state dict (which makes the base build a new group list) keeps sharing.
    opt.load_state_dict(roundtrip(opt.state_dict()))
    assert opt.param_groups is base.param_groups


def test_e_pickles_with_its_base() -> None:
    model = tiny_model()
    opt = E(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), alpha=0.5)
    train(model, opt, batches(2))
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.param_groups is clone.base.param_groups
    assert clone.alpha == 0.5 and len(clone.state) == len(opt.state)


def test_alto_add_param_group_validates_and_steps() -> None:
    model = tiny_model()
    opt = ALTO(model[0].parameters(), lr=1e-2)
    opt.add_param_group({"params": model[3].parameters(), "weight_decay": 0.0})
    assert opt.param_groups[1]["betas"] == (0.99, 0.9, 0.99)
    train(model, opt, batches(1))
    assert len(opt.state) == 4


@pytest.mark.parametrize("cls", [ALTO, Lamb])
def test_init_state_is_what_the_first_step_creates(cls) -> None:
    """init_state() (Megatron's init_state_fn) gives the first step's layout, zeroed."""
    model = torch.nn.Linear(3, 2)
    opt = cls(param_groups(model), lr=1e-2)
    opt.init_state()
    keys = {"step", "exp_avg", "exp_avg_sq"} | ({"diff_carry"} if cls is ALTO else set())
    for p in model.parameters():
        st = opt.state[p]
        assert set(st) == keys
        assert float(st["step"]) == 0.0 and st["step"].device.type == "cpu"
        for k in keys - {"step"}:
            assert st[k].shape == p.shape and st[k].dtype == torch.float32
            assert not st[k].any()
    twin_model = torch.nn.Linear(3, 2)
    twin_model.load_state_dict(model.state_dict())
    twin = cls(param_groups(twin_model), lr=1e-2)
    for m in (model, twin_model):
        m(torch.ones(4, 3)).sum().backward()
    opt.step()
    twin.step()
    for a, b in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(a, b)
