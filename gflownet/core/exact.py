"""How far the sampler is from its target ``R(x)^(1/T) / Z``: exactly where the action space is
small enough to enumerate, and by importance sampling where it is not. Task-independent: any
task can call these from its ``exact_metrics`` or evaluation code.

* ``enumerate_samples``: every sample the action space allows for a prompt (allowed tokens,
  lengths ``min_len..max_len``, then termination), or None when there are more than ``limit``.
* ``exact_metrics``: KL(sampler || target), L1, and log Z against the exact log Z, from the
  sampler's exact log-probability of every sample (one teacher-forced pass) and the reward of each.
* ``importance_metrics``: from samples of the sampler itself (temperature 1): the importance
  estimate ``log Ẑ = log mean exp(log R/T - log P_F)``, the plug-in ``KL ≈ mean(log P_F - log R/T)
  + log Ẑ`` (biased low for few samples; exact as their number grows).
* ``learned_log_z``: the module's log Z head for a prompt, to set beside either.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from gflownet.core.sampling import ActionSpace


def enumerate_samples(space: ActionSpace, limit: int = 20000, row_forbidden: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    """(N, max_len+1) ids ending in the termination token (padded with it) and (N,) lengths, or
    None when the space holds more than ``limit`` samples."""
    blocked = space.forbidden.clone().cpu()
    if row_forbidden is not None:
        blocked |= row_forbidden.cpu().bool()
    blocked[space.termination_id] = True
    allowed = (~blocked).nonzero().flatten().tolist()
    count = sum(len(allowed) ** L for L in range(space.min_len, space.max_len + 1))
    if count > limit or count == 0:
        return None
    ids = torch.full((count, space.max_len + 1), space.termination_id, dtype=torch.long)
    lengths = torch.empty(count, dtype=torch.long)
    i = 0
    for L in range(space.min_len, space.max_len + 1):
        for seq in itertools.product(allowed, repeat=L):
            ids[i, :L] = torch.tensor(seq, dtype=torch.long)
            lengths[i] = L
            i += 1
    return ids, lengths


def terminal_mask(lengths: Tensor, width: int) -> Tensor:
    scored = torch.zeros(lengths.numel(), width, dtype=torch.bool)
    scored[torch.arange(lengths.numel()), lengths.cpu()] = True
    return scored


@torch.no_grad()
def learned_log_z(module, prompt: str) -> float | None:
    if module.log_z_head is None:
        return None
    ids, mask = module.encode([prompt])
    hidden = module.sampler(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][:, -1]
    return float(module.log_z_head(hidden))


@torch.no_grad()
def exact_metrics(module, record, limit: int = 20000, chunk: int = 1024) -> dict[str, float] | None:
    """Exact distances between the sampler and its target for one record (rank 0 or one process,
    reward built); None when the space is larger than ``limit``."""
    prompt = module.prompts_for([record])[0]
    rows = module.row_forbidden([prompt])
    found = enumerate_samples(module.space, limit, rows[0] if rows is not None else None)
    if found is None:
        return None
    ids, lengths = found
    log_p, log_r = [], []
    for s in range(0, len(ids), chunk):
        part_ids, part_len = ids[s:s + chunk], lengths[s:s + chunk]
        n = len(part_ids)
        log_p.append(module.sequence_log_prob([prompt] * n, part_ids, part_len).double().cpu())
        out = module.compute_rewards([prompt] * n, part_ids, part_len, terminal_mask(part_len, ids.size(1)),
                                   module.context([record], n))
        log_r.append(out.log_r.gather(1, part_len[:, None]).squeeze(1).double())
    log_p, log_r = torch.cat(log_p), torch.cat(log_r) / module.reward_temperature()
    log_z = torch.logsumexp(log_r, 0)
    log_target = log_r - log_z
    p = log_p.exp()
    out = {"kl_exact": float((p * (log_p - log_target)).sum()), "l1_exact": float((p - log_target.exp()).abs().sum()),
           "sampler_mass": float(p.sum()), "log_z_exact": float(log_z), "support": float(len(ids))}
    head = learned_log_z(module, prompt)
    if head is not None:
        out["log_z_error"] = head - float(log_z)
    return out


@torch.no_grad()
def importance_metrics(log_pf: Tensor, log_r: Tensor, temperature: float) -> dict[str, float]:
    """From n samples of the sampler for one prompt: their sequence log-probabilities ``log_pf`` (n,)
    and unscaled terminal log-rewards ``log_r`` (n,)."""
    w = log_r.double() / temperature - log_pf.double()
    log_z_hat = float(torch.logsumexp(w, 0) - math.log(w.numel()))
    return {"log_z_estimate": log_z_hat, "kl_estimate": float(-w.mean()) + log_z_hat}
