"""GFlowNet losses as pure tensor functions.

Notation (docs/design.md, section 4). A batch holds ``B`` trajectories; trajectory ``b`` visits states
``s_0 .. s_{L_b}`` (token prefixes after the prompt) and then terminates with ``?``. With
``T = max_b L_b``:

* ``log_pf``    (B, T)   ``log P_F(x_t | s_t)`` of the token taken at state ``t`` (``t < L_b``).
* ``log_pterm`` (B, T+1) ``log P_F(? | s_t)``; ``-inf`` where termination is not allowed.
* ``log_r``     (B, T+1) ``log R(s_t + ?)``, the reward of the sample stopping at ``s_t``.
* ``scored``    (B, T+1) bool: which states have a reward. Only scored states are SubTB
  endpoints, so rewarding a subset of prefixes keeps the objective exact. States past
  ``L_b`` and states where termination is impossible (``log_pterm == -inf``) must not be scored.
* ``lengths``   (B,) long: ``L_b``.

Entries outside the masks may hold anything, including ``inf``/``nan``; they are never used
(and never reach the gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_shapes(log_pf: Tensor, log_pterm: Tensor, log_r: Tensor, lengths: Tensor) -> None:
    B, T = log_pf.shape
    if log_pterm.shape != (B, T + 1) or log_r.shape != (B, T + 1):
        raise ValueError(
            f"expected log_pterm and log_r of shape {(B, T + 1)} for log_pf {tuple(log_pf.shape)}, "
            f"got {tuple(log_pterm.shape)} and {tuple(log_r.shape)}"
        )
    if lengths.shape != (B,):
        raise ValueError(f"expected lengths of shape {(B,)}, got {tuple(lengths.shape)}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [0, {T}], got {lengths.tolist()}")


def action_mask(lengths: Tensor, num_actions: int) -> Tensor:
    """(B, T) bool: ``t < L_b``, the non-terminating actions each trajectory took."""
    return torch.arange(num_actions, device=lengths.device)[None, :] < lengths[:, None]


def trajectory_log_prob(log_pf: Tensor, log_pterm: Tensor, lengths: Tensor) -> Tensor:
    """(B,) ``log P_F`` of each complete trajectory: its actions (``t < L_b``) plus termination at ``L_b``."""
    pf = torch.where(action_mask(lengths, log_pf.size(1)), log_pf, torch.zeros_like(log_pf)).sum(dim=1)
    return pf + log_pterm.gather(1, lengths[:, None]).squeeze(1)


def subtb_loss(
    log_pf: Tensor,
    log_pterm: Tensor,
    log_r: Tensor,
    scored: Tensor,
    lengths: Tensor,
    subtb_lambda: float = 1.0,
    log_z: Tensor | None = None,
) -> Tensor:
    """Modified Sub-Trajectory Balance loss (scalar).

    For every pair of endpoint states ``i < j`` of a trajectory, with the implicit flow
    ``log F(s) = log R(s + ?) - log P_F(? | s)`` of scored states:

        delta_ij = log F(s_i) + sum_{t=i}^{j-1} log_pf[t] - log F(s_j)

    The loss is ``sum w_ij delta_ij^2 / sum w_ij`` over all such pairs of the batch, with
    ``w_ij = subtb_lambda ** (j - i - 1)``. Returns a zero that still depends on the inputs
    when no pair exists (every trajectory has fewer than two endpoints).

    ``log_z`` (B,), optional: a learned ``log F(s_0)`` of each trajectory's prompt, making the
    root an endpoint too. Without it, when termination is impossible below a minimum length the
    root is never an endpoint and nothing ties the distribution of the first tokens to the
    reward (only ratios between states that can terminate are constrained); with it the pairs
    ``(0, L)`` are exactly Trajectory Balance. The root must then not also be scored.
    """
    _check_shapes(log_pf, log_pterm, log_r, lengths)
    B, T = log_pf.shape
    steps = torch.arange(T + 1, device=log_pf.device)
    scored = scored & (steps[None, :] <= lengths[:, None])
    if torch.isinf(torch.where(scored, log_pterm, 0.0)).any() or torch.isinf(torch.where(scored, log_r, 0.0)).any():
        raise ValueError("a scored state has an infinite log_pterm or log_r: only score states that can terminate")

    pf = torch.where(action_mask(lengths, T), log_pf, torch.zeros_like(log_pf))
    cum_pf = torch.cat([pf.new_zeros(B, 1), pf.cumsum(dim=1)], dim=1)  # (B, T+1): sum_{t<k} log_pf[t]
    log_flow = torch.where(scored, log_r, 0.0) - torch.where(scored, log_pterm, 0.0)
    endpoint = scored
    if log_z is not None:
        if log_z.shape != (B,):
            raise ValueError(f"expected log_z of shape {(B,)}, got {tuple(log_z.shape)}")
        if scored[:, 0].any():
            raise ValueError("log_z gives the root's flow, so state 0 must not also be scored")
        root = steps[None, :] == 0
        log_flow = torch.where(root, log_z[:, None].to(log_flow.dtype), log_flow)
        endpoint = scored | root
    g = log_flow - cum_pf  # delta_ij = g_i - g_j
    delta = g[:, :, None] - g[:, None, :]  # (B, i, j)

    gap = steps[None, :] - steps[:, None]  # j - i
    pair = (gap > 0)[None] & endpoint[:, :, None] & endpoint[:, None, :]
    weight = torch.where(gap > 0, torch.as_tensor(subtb_lambda, dtype=log_pf.dtype, device=log_pf.device) ** (gap - 1).clamp(min=0), 0.0)
    weight = weight[None] * pair
    total = weight.sum()
    if total == 0:
        return (delta * 0.0).sum()
    return (weight * delta.pow(2)).sum() / total


def tb_loss(log_pf: Tensor, log_pterm: Tensor, log_r_terminal: Tensor, log_z: Tensor, lengths: Tensor) -> Tensor:
    """Trajectory Balance loss (scalar), mean over the batch.

    ``(log Z(prompt_b) + sum_{t<L_b} log_pf[t] + log_pterm[L_b] - log R(x_b))^2`` with
    ``log_r_terminal`` (B,) the terminal reward and ``log_z`` (B,) the learned log-partition of
    each trajectory's prompt.
    """
    B, T = log_pf.shape
    if log_pterm.shape != (B, T + 1):
        raise ValueError(f"expected log_pterm of shape {(B, T + 1)}, got {tuple(log_pterm.shape)}")
    if log_r_terminal.shape != (B,) or log_z.shape != (B,) or lengths.shape != (B,):
        raise ValueError("log_r_terminal, log_z and lengths must have shape (B,)")
    return (log_z + trajectory_log_prob(log_pf, log_pterm, lengths) - log_r_terminal).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# Loss objects for config: each says which states it needs scored, and whether it learns log Z.


def periodic_states(lengths: Tensor, min_len: int, every: int) -> Tensor:
    """(B, T+1) bool: every ``every``-th state from ``min_len`` on, plus each terminal state."""
    T = int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(T + 1)[None, :]
    L = lengths.cpu()[:, None]
    periodic = (steps >= min_len) & ((steps - min_len) % every == 0) & (steps <= L)
    return periodic | (steps == L)


def terminal_states(lengths: Tensor) -> Tensor:
    """(B, T+1) bool: each trajectory's terminal state only."""
    T = int(lengths.max()) if lengths.numel() else 0
    return torch.arange(T + 1)[None, :] == lengths.cpu()[:, None]


def _check_logz(logz_lr: float, logz_init) -> None:
    if not float(logz_lr) > 0:
        raise ValueError(f"loss.logz_lr={logz_lr}: log Z's learning rate must be positive")
    if logz_init != "auto":
        float(logz_init)  # a number, or ValueError


class SubTB:
    """Modified SubTB (``subtb_loss``) over every ``score_every``-th state plus the terminal one.

    Scoring a subset of states is exact (the balance holds between any two scored states), and
    trades reward calls for credit assignment. ``root_flow`` adds a learned log Z(prompt) as the
    root's flow (see ``subtb_loss``)."""

    name = "subtb"

    def __init__(self, subtb_lambda: float = 1.0, score_every: int = 1, root_flow: bool = True, logz_lr: float = 0.1,
                 logz_init: str | float = "auto"):
        if int(score_every) < 1:
            raise ValueError(f"loss.score_every must be >= 1, got {score_every}")
        if root_flow:
            _check_logz(logz_lr, logz_init)
        self.subtb_lambda, self.score_every, self.root_flow = float(subtb_lambda), int(score_every), bool(root_flow)
        self.logz_lr, self.logz_init = logz_lr, logz_init

    @property
    def uses_log_z(self) -> bool:
        return self.root_flow

    def check_space(self, min_len: int) -> None:
        """Refuse an action space this loss cannot train exactly (called once, at start-up)."""
        if self.root_flow and int(min_len) == 0:
            raise ValueError(
                "task.min_len=0 with loss=subtb and loss.root_flow=true: state 0 is the root, whose flow is the "
                "learned log Z, and the empty sample's reward would score the same state a second time. Use "
                "task.min_len=1 (samples of at least one token), loss=tb (terminal rewards only), or "
                "loss.root_flow=false (the root's flow then comes from the empty sample's reward)")

    def scored_states(self, lengths: Tensor, min_len: int, terminal_only: bool = False) -> Tensor:
        return terminal_states(lengths) if terminal_only else periodic_states(lengths, min_len, self.score_every)

    def __call__(self, log_pf, log_pterm, log_r, scored, lengths, log_z=None) -> Tensor:
        return subtb_loss(log_pf, log_pterm, log_r, scored, lengths, self.subtb_lambda, log_z=log_z if self.root_flow else None)


class TB:
    """Trajectory Balance (``tb_loss``) with a learned log Z(prompt); needs only terminal rewards."""

    name = "tb"
    uses_log_z = True

    def __init__(self, logz_lr: float = 0.1, logz_init: str | float = "auto"):
        _check_logz(logz_lr, logz_init)
        self.logz_lr, self.logz_init = logz_lr, logz_init

    def check_space(self, min_len: int) -> None:  # noqa: ARG002
        """TB scores terminal states only: any minimum length is exact."""

    def scored_states(self, lengths: Tensor, min_len: int, terminal_only: bool = False) -> Tensor:  # noqa: ARG002
        return terminal_states(lengths)

    def __call__(self, log_pf, log_pterm, log_r, scored, lengths, log_z=None) -> Tensor:  # noqa: ARG002
        if log_z is None:
            raise ValueError("TB needs log Z (the module's log Z head)")
        terminal = log_r.gather(1, lengths[:, None]).squeeze(1)
        return tb_loss(log_pf, log_pterm, terminal, log_z, lengths)
