"""Losses against slow float64 loop references, and the proof that SubTB depends on the reward."""

import math

import pytest
import torch

from gflownet.core.losses import subtb_loss, tb_loss


def random_batch(seed: int, B: int = 5, T: int = 7, min_len: int = 2):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    lengths[0] = T  # at least one full-length trajectory
    log_pf = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    log_pterm = -torch.rand(B, T + 1, generator=g, dtype=torch.float64) * 3
    log_pterm[:, :min_len] = -math.inf  # termination impossible below the minimum length
    log_r = torch.randn(B, T + 1, generator=g, dtype=torch.float64) * 2
    steps = torch.arange(T + 1)[None]
    scored = (steps >= min_len) & (steps <= lengths[:, None]) & (torch.rand(B, T + 1, generator=g) < 0.6)
    scored |= steps == lengths[:, None]  # the terminal state is always scored
    # garbage outside the masks must not matter
    log_pf = torch.where(torch.arange(T)[None] < lengths[:, None], log_pf, torch.full_like(log_pf, math.nan))
    log_r = torch.where(scored, log_r, torch.full_like(log_r, math.inf))
    return log_pf, log_pterm, log_r, scored, lengths


def subtb_reference(log_pf, log_pterm, log_r, scored, lengths, lam, log_z=None):
    num = den = 0.0
    for b in range(len(lengths)):
        L = int(lengths[b])

        def flow(t):
            if t == 0 and log_z is not None:
                return float(log_z[b])
            return float(log_r[b, t]) - float(log_pterm[b, t])

        states = [t for t in range(L + 1) if scored[b, t] or (t == 0 and log_z is not None)]
        for i in states:
            for j in states:
                if j <= i:
                    continue
                delta = flow(i) + sum(float(log_pf[b, t]) for t in range(i, j)) - flow(j)
                w = lam ** (j - i - 1)
                num += w * delta**2
                den += w
    return num / den if den else 0.0


def tb_reference(log_pf, log_pterm, log_r_terminal, log_z, lengths):
    total = 0.0
    for b in range(len(lengths)):
        L = int(lengths[b])
        total += (float(log_z[b]) + sum(float(log_pf[b, t]) for t in range(L)) + float(log_pterm[b, L]) - float(log_r_terminal[b])) ** 2
    return total / len(lengths)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam", [1.0, 0.9, 0.5])
def test_subtb_matches_float64_loop_reference(seed, lam):
    log_pf, log_pterm, log_r, scored, lengths = random_batch(seed)
    got = subtb_loss(log_pf, log_pterm, log_r, scored, lengths, lam)
    want = subtb_reference(log_pf, log_pterm, log_r, scored, lengths, lam)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_subtb_float32_close_to_reference_and_gradients_finite():
    log_pf, log_pterm, log_r, scored, lengths = random_batch(11)
    pf = log_pf.float().requires_grad_()
    got = subtb_loss(pf, log_pterm.float(), log_r.float(), scored, lengths)
    got.backward()
    assert float(got) == pytest.approx(subtb_reference(log_pf, log_pterm, log_r, scored, lengths, 1.0), rel=1e-5)
    assert torch.isfinite(pf.grad).all()
    assert (pf.grad[torch.arange(7)[None] >= lengths[:, None]] == 0).all()  # nothing flows past termination


@pytest.mark.parametrize("seed", range(4))
def test_tb_matches_float64_loop_reference(seed):
    log_pf, log_pterm, log_r, scored, lengths = random_batch(seed)
    terminal = torch.randn(len(lengths), dtype=torch.float64)
    log_z = torch.randn(len(lengths), dtype=torch.float64)
    got = tb_loss(log_pf, log_pterm, terminal, log_z, lengths)
    assert float(got) == pytest.approx(tb_reference(log_pf, log_pterm, terminal, log_z, lengths), rel=1e-12)


def test_subtb_gradient_depends_on_per_prefix_reward_but_not_on_a_broadcast_one():
    """The original bug: copying the final reward to every position cancels it out of every residual."""
    log_pf, log_pterm, log_r, scored, lengths = random_batch(3)
    T1 = log_pterm.size(1)
    final = log_r.gather(1, lengths[:, None]).clone().requires_grad_()

    broadcast = final.expand(-1, T1)  # the original implementation
    broken = subtb_loss(log_pf, log_pterm, broadcast, scored, lengths)
    (g_broken,) = torch.autograd.grad(broken, final)
    assert torch.allclose(g_broken, torch.zeros_like(g_broken), atol=1e-12)
    shifted = subtb_loss(log_pf, log_pterm, (final + 5.0).expand(-1, T1), scored, lengths)
    assert float(shifted) == pytest.approx(float(broken), rel=1e-12)  # the loss ignores the reward entirely

    per_prefix = torch.where(scored, log_r, 0.0).clone().requires_grad_()
    real = subtb_loss(log_pf, log_pterm, per_prefix, scored, lengths)
    (g_real,) = torch.autograd.grad(real, per_prefix)
    assert g_real[scored].abs().sum() > 1e-3
    assert float(subtb_loss(log_pf, log_pterm, per_prefix.detach() + 5.0 * scored.double() * torch.arange(T1), scored, lengths)) != pytest.approx(float(real))


def test_subtb_rejects_scored_states_that_cannot_terminate():
    log_pf, log_pterm, log_r, scored, lengths = random_batch(0)
    bad = scored.clone()
    bad[:, 0] = True  # termination is -inf at state 0
    with pytest.raises(ValueError, match="only score states that can terminate"):
        subtb_loss(log_pf, log_pterm, torch.where(bad, torch.zeros_like(log_pterm), 0.0), bad, lengths)


def test_subtb_with_single_scored_state_is_zero_with_gradient_path():
    log_pf = torch.zeros(1, 3, requires_grad=True)
    loss = subtb_loss(log_pf, torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([[False, False, False, True]]), torch.tensor([3]))
    assert float(loss) == 0.0
    loss.backward()


def test_shape_errors_are_explicit():
    with pytest.raises(ValueError, match="expected log_pterm and log_r of shape"):
        subtb_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 3\]"):
        subtb_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool), torch.tensor([3, 4]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [1.0, 0.8])
def test_subtb_with_root_flow_matches_reference(seed, lam):
    log_pf, log_pterm, log_r, scored, lengths = random_batch(seed)
    log_z = torch.randn(len(lengths), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = subtb_loss(log_pf, log_pterm, log_r, scored, lengths, lam, log_z=log_z)
    want = subtb_reference(log_pf, log_pterm, log_r, scored, lengths, lam, log_z=log_z)
    assert float(got) == pytest.approx(want, rel=1e-12)
    if lam != 1.0:
        return
    # pairs (0, L) alone, equally weighted, are Trajectory Balance
    terminal_only = torch.arange(log_pterm.size(1))[None] == lengths[:, None]
    root_tb = subtb_loss(log_pf, log_pterm, log_r, terminal_only, lengths, lam, log_z=log_z)
    terminal = log_r.gather(1, lengths[:, None]).squeeze(1)
    assert float(root_tb) == pytest.approx(float(tb_loss(log_pf, log_pterm, terminal, log_z, lengths)), rel=1e-12)


def test_root_flow_ties_the_reward_back_in_even_when_broadcast():
    """With a root flow the pairs (0, j) keep the reward: the broadcast bug is then not a silent no-op."""
    log_pf, log_pterm, log_r, scored, lengths = random_batch(5)
    final = log_r.gather(1, lengths[:, None]).clone().requires_grad_()
    loss = subtb_loss(log_pf, log_pterm, final.expand(-1, log_pterm.size(1)), scored, lengths, log_z=torch.zeros(len(lengths), dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss, final)
    assert grad.abs().sum() > 1e-3


def test_root_flow_rejects_a_scored_root():
    log_pf, log_pterm, log_r, scored, lengths = random_batch(0, min_len=0)
    log_pterm[:, 0] = -1.0
    log_r[:, 0] = 0.0
    bad = scored.clone()
    bad[:, 0] = True
    with pytest.raises(ValueError, match="state 0 must not also be scored"):
        subtb_loss(log_pf, log_pterm, torch.where(bad, log_r, 0.0), bad, lengths, log_z=torch.zeros(len(lengths), dtype=torch.float64))


def _tabular_fit(loss, steps: int) -> dict[int, tuple[float, float]]:
    """Fit a tabular policy (one free logit per state and action) to the known-target problem with
    ``loss`` over all 84 sequences at once (deterministic: no sampling, fixed start), Adam; returns
    the exact L1 to R/Z and log Z's error after 100 steps and after ``steps``."""
    from gflownet.core.losses import trajectory_log_prob
    from gflownet.tasks.toy.problem import ToyProblem

    problem = ToyProblem(seed=0)
    ids, lengths = problem.batch_of_all()  # words are ids 2..5; length 1-3, then termination
    B, T1 = ids.shape
    T, W = T1 - 1, problem.n_words
    words = (ids - 2).clamp(0, W - 1)
    state = torch.zeros(B, T, dtype=torch.long)  # the state each action is taken from: root, (a), (a, b)
    state[:, 1] = 1 + words[:, 0]
    state[:, 2] = 1 + W + words[:, 0] * W + words[:, 1]
    logits = torch.nn.Parameter(0.1 * torch.randn(1 + W + W * W, W + 1, generator=torch.Generator().manual_seed(0)))
    log_z = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.Adam([{"params": [logits], "lr": 0.05}, {"params": [log_z], "lr": 0.3}])
    log_r = torch.zeros(B, T1)
    for b in range(B):
        for t in range(1, int(lengths[b]) + 1):
            log_r[b, t] = problem.log_r[tuple(ids[b, :t].tolist())]
    scored = loss.scored_states(lengths, 1)
    at = torch.arange(T1)
    out = {}
    for step in range(1, steps + 1):
        lp = logits.clone()
        lp[0, W] = float("-inf")  # no termination at the root (min_len 1)
        per_state = lp.log_softmax(-1)[state]  # (B, T, W + 1)
        log_pf = torch.where(at[None, :T] < lengths[:, None], per_state.gather(-1, words[:, :T, None]).squeeze(-1), 0.0)
        log_pterm = torch.cat([per_state[..., W], torch.zeros(B, 1)], dim=1)  # max_len 3: termination forced
        log_pterm = torch.where(at[None] <= lengths[:, None], log_pterm, 0.0)
        value = loss(log_pf, log_pterm, log_r, scored, lengths, log_z.expand(B))
        opt.zero_grad()
        value.backward()
        opt.step()
        if step in (100, steps):  # the distribution the loss was just computed on
            p = trajectory_log_prob(log_pf.detach(), log_pterm.detach(), lengths).double().exp()
            out[step] = (float((p - problem.target).abs().sum()), float(log_z) - problem.log_z)
    return out


@pytest.mark.parametrize("name", ["tb", "subtb_sparse", "subtb_every_state"])
def test_every_objective_fits_the_known_target_exactly_with_a_tabular_policy(name):
    """SubTB over sparsely scored states (``score_every=4``: on sequences of 1-3 tokens, state 1 and the
    terminal one, as on the real task's default) is as exact as TB and fully scored SubTB: with a
    free logit per state, each reaches R/Z and log Z within 0.01 in the same 500 steps. (So the slower
    convergence of sparse SubTB on the toy network, tests/test_known_target.py, is not the objective's.)"""
    from gflownet.core.losses import TB, SubTB

    loss = {"tb": TB(), "subtb_sparse": SubTB(score_every=4), "subtb_every_state": SubTB(score_every=1)}[name]
    fit = _tabular_fit(loss, 500)
    l1, log_z_error = fit[500]
    assert l1 < 0.01 and abs(log_z_error) < 0.01, fit
    assert fit[100][0] > 0.1  # 100 steps are not enough: the bound above is earned, not given
