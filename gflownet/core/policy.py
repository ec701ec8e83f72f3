"""The policy: what samples and scores trajectories. The tokenizer, the LoRA sampler, its action
space (termination, forbidden tokens, length limits), the per-record masks of a task that forbids
tokens per record, and the log Z head that the loss learns beside it.

Knows no task beyond ``Task.limits``, ``Task.prompt`` and the optional ``Task.forbidden_ids``; knows
nothing of rewards, ranks or the replay buffer (``LMGFlowNet`` wires those).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from gflownet.core import losses
from gflownet.core.modeling import disable_dropout, load_sampler, load_tokenizer
from gflownet.core.protocols import Task, task_hook
from gflownet.core.sampling import (
    ActionSpace, Trajectories, encode_prompts, forbidden_token_mask, sample_texts, sample, score,
    termination_token_id,
)

log = logging.getLogger(__name__)


class LogZHead(nn.Module):
    """log Z(prompt) = w . layer_norm(h) + b, with h the sampler's last hidden state at the prompt's
    final token (detached: log Z learns from its own head only).

    The features are normalised (no affine), and ``param_groups`` gives the weight a learning rate
    of ``lr / hidden_size``: under Adam every coordinate moves by about the learning rate per step,
    so the weight's contribution to log Z moves by at most about ``lr`` per step, as the bias does,
    whatever the scale of the hidden states. (With a plain Linear over raw hidden states, one Adam
    step at lr 0.1 moves log Z by lr x sum |h_i|, tens of nats for SmolLM2's states; on the toy
    task TB then ended 0.16-0.65 from its target instead of under 0.1.)"""

    def __init__(self, hidden_size: int, init: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, init)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = nn.functional.layer_norm(hidden.float(), hidden.shape[-1:])
        return self.linear(h).squeeze(-1)

    @torch.no_grad()
    def set_constant(self, value: float) -> None:
        self.linear.weight.zero_()
        self.linear.bias.fill_(value)

    def param_groups(self, lr: float) -> list[dict]:
        H = self.linear.weight.size(1)
        return [{"params": [self.linear.bias], "lr": lr, "weight_decay": 0.0},
                {"params": [self.linear.weight], "lr": lr / H, "weight_decay": 0.0}]


class Policy:
    """Samples and scores trajectories of a task's action space under the LoRA sampler.

    ``log_z_init`` None: no log Z head (a loss without log Z); else the head's initial value."""

    def __init__(self, task: Task, sampler_cfg: dict, lora: dict | None, models_dir: str,
                 log_z_init: float | None = None):
        self.task = task
        self.name = str(sampler_cfg["name_or_path"])
        self.tokenizer = load_tokenizer(self.name, models_dir)
        self.sampler = load_sampler(
            self.name, lora, models_dir, dtype=sampler_cfg.get("dtype", "float32"),
            load_in_4bit=sampler_cfg.get("load_in_4bit", False),
            gradient_checkpointing=sampler_cfg.get("gradient_checkpointing", False),
        )
        dropped = disable_dropout(self.sampler)  # LoRA's lora_dropout (the base's is zeroed at load)
        if dropped:
            log.info("LoRA dropout %.2f is off in training: the loss must score the policy that sampled", dropped)
        limits = task.limits
        self.vocab_size = self.sampler.get_output_embeddings().weight.size(0)
        term = termination_token_id(self.tokenizer, limits.termination_text)
        self.forbidden = forbidden_token_mask(self.tokenizer, self.vocab_size, list(limits.forbidden), term)
        self.space = ActionSpace(term, self.forbidden, int(limits.min_len), int(limits.max_len))
        self.log_z_head = None if log_z_init is None else LogZHead(
            self.sampler.config.get_text_config().hidden_size, float(log_z_init))
        self._prompt_forbidden: dict[str, torch.Tensor] = {}  # prompt -> token ids its record forbids
        self._prompt_owner: dict[str, str] = {}  # prompt -> the record that first gave it a mask (for the clash error)

    @property
    def device(self) -> torch.device:
        return next(self.sampler.parameters()).device

    # ------------------------------------------------------------------ prompts and masks
    @property
    def per_record_forbidden(self) -> bool:
        """Whether the task forbids tokens per record (``Task.forbidden_ids``, optional)."""
        return callable(task_hook(self.task, "forbidden_ids"))

    def prompts_for(self, records: list) -> list[str]:
        """The sampler's prompt of each record. A task with per-record forbidden tokens
        (``Task.forbidden_ids``) has them noted here, by prompt, for every later sample and score.

        A trajectory is known by its prompt (in the exchange, the replay buffer and rescoring), so
        the mask must be a function of the prompt: records that share a prompt but forbid different
        tokens are refused (a trajectory sampled under one's mask scores -inf under the other's, and
        which record came first would decide, differently per rank and after a resume).
        ``check_records`` makes the same check over a whole data set at start-up."""
        prompts = [self.task.prompt(r, self.tokenizer) for r in records]
        if self.per_record_forbidden:
            for p, r in zip(prompts, records):
                ids = torch.tensor(sorted({int(i) for i in self.task.forbidden_ids(r, self.tokenizer)}
                                          - {self.space.termination_id}), dtype=torch.long)
                known = self._prompt_forbidden.get(p)
                if known is None:
                    self._prompt_forbidden[p] = ids
                    self._prompt_owner[p] = self.task.describe(r)
                elif not torch.equal(known, ids):
                    raise ValueError(
                        f"records {self._prompt_owner[p]!r} and {self.task.describe(r)!r} have the same sampler prompt "
                        f"({p[-80:]!r}) but forbid different tokens: a trajectory sampled under one's mask cannot be scored "
                        "under the other's, and both would share replay-buffer entries. Give each record a prompt that "
                        "names what its mask depends on (the task's prompt format), drop one of the records, or turn the "
                        "task's per-record mask off")
        return prompts

    def check_records(self, records: list) -> None:
        """Start-up check of a data set: every record's prompt and per-record mask, so that a clash of
        masks under one prompt (``prompts_for``) is refused before the first step."""
        if self.per_record_forbidden and records:
            self.prompts_for(list(records))

    def row_forbidden(self, row_prompts: list[str]) -> torch.Tensor | None:
        """(B, V) bool: the per-record forbidden tokens of each row's prompt, or None when the task has none."""
        if not self.per_record_forbidden:
            return None
        mask = torch.zeros(len(row_prompts), self.space.vocab_size, dtype=torch.bool)
        for i, p in enumerate(row_prompts):
            if p not in self._prompt_forbidden:
                raise KeyError(f"no forbidden tokens noted for prompt {p[:60]!r}: build prompts with prompts_for(records)")
            mask[i, self._prompt_forbidden[p]] = True
        return mask.to(self.device)

    def encode(self, prompts: list[str], n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask of each prompt repeated n times (one row per trajectory)."""
        return encode_prompts(self.tokenizer, [p for p in prompts for _ in range(n)], self.device)

    def texts(self, sample_ids: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Each sample's text, cut before the termination text."""
        return sample_texts(self.tokenizer, sample_ids, lengths, self.task.limits.termination_text)

    # ------------------------------------------------------------------ sample and score
    @torch.no_grad()
    def draw(self, prompts: list[str], n: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None, encoded=None) -> Trajectories:
        """n trajectories per prompt (no gradients, KV cache)."""
        ids, mask = encoded if encoded is not None else self.encode(prompts, n)
        return sample(self.sampler, ids, mask, self.space, self.tokenizer.pad_token_id, temperature=temperature,
                      top_k=top_k, top_p=top_p, generator=generator,
                      row_forbidden=self.row_forbidden([p for p in prompts for _ in range(n)]))

    def score(self, prompt_ids, prompt_mask, sample_ids, lengths, want_hidden: bool = False,
              row_prompts: list[str] | None = None):
        """``log_pf``, ``log_pterm`` (and the prompt's last hidden state) of trajectories under the
        sampler, with gradients: the policy that sampled them. Train mode (gradient checkpointing
        acts only there); dropout is off (``modeling.disable_dropout``), as it was while sampling."""
        self.sampler.train()
        rows = self.row_forbidden(row_prompts) if row_prompts is not None else None
        if rows is None and self.per_record_forbidden:
            raise ValueError("this task forbids tokens per record: pass row_prompts to score_trajectories")
        return score(self.sampler, prompt_ids, prompt_mask, sample_ids.to(self.device), lengths.to(self.device),
                     self.space, return_prompt_hidden=want_hidden, row_forbidden=rows)

    def sequence_log_prob(self, prompts: list[str], sample_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) exact log-probability of each complete sample under the sampler (temperature 1), one
        teacher-forced pass. ``prompts`` has one entry per row."""
        ids, mask = self.encode(prompts)
        lengths = lengths.to(self.device)
        with torch.no_grad():
            log_pf, log_pterm = score(self.sampler, ids, mask, sample_ids.to(self.device), lengths, self.space,
                                      row_forbidden=self.row_forbidden(prompts))
        return losses.trajectory_log_prob(log_pf, log_pterm, lengths)
