"""The update guard: an optimizer step after which no rank's loss was finite leaves the weights alone.

A rank with a non-finite loss sends zero gradients (``distributed.balance_nonfinite``). When no
rank's loss was finite since the last update, the gradient is zero everywhere, but AdamW would
still move the weights by its momentum and weight decay. The guard notes the weights and the
optimizer state before such a step (after backward) and puts them back after it.
"""

from __future__ import annotations

import copy

import torch


class UpdateGuard:
    def __init__(self) -> None:
        self.finite_since_update = False  # whether any rank's loss was finite since the last optimizer step
        self._saved: tuple[torch.optim.Optimizer, list, list[torch.Tensor], dict] | None = None

    def saw(self, finite_ranks: int) -> None:
        """A micro-batch's backward: ``finite_ranks`` ranks had a finite loss."""
        self.finite_since_update |= finite_ranks > 0

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After backward, before the optimizer step: note what a step with nothing finite must not change."""
        if not self.finite_since_update:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            self._saved = (optimizer, params, [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()))

    def after_step(self) -> bool:
        """After the optimizer step: put the noted weights and state back; True if it did."""
        restored = self._saved is not None
        if restored:
            optimizer, params, saved, state = self._saved
            with torch.no_grad():
                for p, before in zip(params, saved):
                    p.copy_(before)
            optimizer.load_state_dict(state)
            self._saved = None
        self.finite_since_update = False
        return restored
