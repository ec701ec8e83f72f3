"""Pieces of the core module that the end-to-end runs cannot isolate."""

import pytest
import torch

from gflownet.core.module import LogZHead
from gflownet.core.schedules import warmup_linear


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_log_z_head_moves_by_about_its_learning_rate_per_step_whatever_the_hidden_scale(scale):
    torch.manual_seed(0)
    H, lr = 576, 0.1
    head = LogZHead(H, init=5.0)
    hidden = torch.randn(8, H) * scale + 3.0 * scale
    opt = torch.optim.Adam(head.param_groups(lr))
    before = head(hidden).detach()
    loss = (head(hidden) - 1000.0).pow(2).mean()  # a target far away: the largest Adam step
    loss.backward()
    opt.step()
    moved = (head(hidden).detach() - before).abs()
    assert float(moved.max()) <= 2.05 * lr
    # a plain Linear on the raw states, as before, moves by about lr x sum |h|
    plain = torch.nn.Linear(H, 1)
    torch.nn.init.zeros_(plain.weight)
    opt = torch.optim.Adam(plain.parameters(), lr=lr)
    start = plain(hidden).detach()
    (plain(hidden) - 1000.0).pow(2).mean().backward()
    opt.step()
    assert float((plain(hidden).detach() - start).abs().max()) > 10 * lr


def test_log_z_head_constant_and_groups():
    head = LogZHead(4)
    head.set_constant(7.5)
    assert torch.allclose(head(torch.randn(3, 4)), torch.full((3,), 7.5))
    groups = head.param_groups(0.2)
    assert [g["lr"] for g in groups] == [0.2, 0.05] and all(g["weight_decay"] == 0.0 for g in groups)


def test_warmup_then_linear_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear(opt, warmup_steps=4, decay_steps=10, final_fraction=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5 * 0.91, 0.75 * 0.82, 1.0 * 0.73])
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="final_fraction"):
        warmup_linear(opt, final_fraction=1.5)
