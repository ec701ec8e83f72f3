"""LMGFlowNet: the one LightningModule. It knows nothing of any task; it wires the pieces.

One training step, per rank (docs/design.md has the picture):

1. ``task.prompt`` turns each of the rank's records into the sampler's prompt.
2. With probability ``gfn.use_buffer_prob`` the step replays stored trajectories of those
   prompts; otherwise the sampler draws ``gfn.n_samples`` fresh ones per prompt (no grad, KV
   cache, exploration temperature).
3. Fresh trajectories go to rank 0 (``distributed.compute_on_rank0``), which calls the reward
   once for every rank's trajectories, at the states the loss asks for, and sends each rank its
   own unscaled per-state log-rewards and components. Only rank 0 builds the reward.
4. The core divides log R by the reward temperature (its schedule lives here), rescoring the
   trajectories with gradients after their own prompts, and the loss (SubTB or TB) trains the
   LoRA weights and the log Z head.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gflownet.core import distributed, losses
from gflownet.core.metrics import Embedder, semantic_diversity_per_prompt
from gflownet.core.modeling import disable_dropout, load_sampler, load_tokenizer, resolve
from gflownet.core.protocols import RewardEnv, RewardFactory, RewardOutput, Rollout, Task, record_field, task_hook
from gflownet.core.replay_buffer import BufferEntry, entries_to_rollout, to_entries
from gflownet.core.sample_log import SampleLog
from gflownet.core.sampling import (
    ActionSpace, Trajectories, encode_prompts, forbidden_token_mask, question_texts, sample, score,
    termination_token_id,
)
from gflownet.core.schedules import linear_schedule
from gflownet.core.update_guard import UpdateGuard

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def describe_factory(factory: Any) -> Any:
    """A JSON-able description of a (Hydra ``_partial_``) factory: its target and arguments."""
    if isinstance(factory, functools.partial):
        def value(v):
            if isinstance(v, DictConfig) or OmegaConf.is_list(v):
                try:
                    return OmegaConf.to_container(v, resolve=True)
                except Exception:  # an interpolation that only resolves inside a Hydra run
                    return OmegaConf.to_container(v, resolve=False)
            return v

        return {"target": f"{factory.func.__module__}.{factory.func.__qualname__}",
                "args": [value(a) for a in factory.args], "kwargs": {k: value(v) for k, v in sorted(factory.keywords.items())}}
    return f"{type(factory).__module__}.{type(factory).__qualname__}"


def check_gfn_config(gfn: dict) -> None:
    """Reject values that would fail (or silently mean something else) later in a run."""
    problems = []
    for key in ("use_buffer_prob", "pf_temp_prob"):
        if not 0.0 <= float(gfn[key]) <= 1.0:
            problems.append(f"gfn.{key}={gfn[key]} is a probability: use a value in [0, 1]")
    if not 0.0 < float(gfn["pf_temp_low"]) <= float(gfn["pf_temp_high"]):
        problems.append(f"gfn.pf_temp_low={gfn['pf_temp_low']} and gfn.pf_temp_high={gfn['pf_temp_high']}: "
                        "exploration temperatures need 0 < pf_temp_low <= pf_temp_high")
    if str(gfn.get("sample_log_states", "terminal")) not in {"terminal", "all"}:
        problems.append(f"gfn.sample_log_states={gfn['sample_log_states']}: use terminal (one row per sample) or all "
                        "(one row per scored state)")
    if int(gfn["n_samples"]) < 1:
        problems.append(f"gfn.n_samples={gfn['n_samples']}: sample at least 1 trajectory per record")
    temp = gfn["reward_temperature"]
    if not (float(temp["start"]) > 0 and float(temp["end"]) > 0):
        problems.append(f"gfn.reward_temperature start={temp['start']} end={temp['end']}: log R is divided by it, use values > 0")
    if problems:
        raise ValueError("bad gfn config: " + "; ".join(problems))


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


class LMGFlowNet(pl.LightningModule):
    def __init__(self, task: Task, model: dict, loss, reward: RewardFactory, buffer: Callable[[], Any],
                 optimizer: Callable[..., torch.optim.Optimizer], gfn: dict, models_dir: str,
                 scheduler: Callable[..., Any] | None = None, seed: int = 0, probe_every: int = 10):
        super().__init__()
        model, gfn = plain(model), plain(gfn)
        self.save_hyperparameters({"model": model, "gfn": gfn, "seed": seed, "task": task.name, "loss": type(loss).__name__})
        check_gfn_config(gfn)
        lr = getattr(optimizer, "keywords", {}).get("lr")
        if lr is not None and not float(lr) > 0.0:
            raise ValueError(f"bad optimizer config: optimizer.lr={lr}: the learning rate must be positive")
        self.task, self.loss, self.gfn, self.model_cfg, self.models_dir = task, loss, gfn, model, models_dir
        self.reward_factory, self.buffer_factory = reward, buffer
        self.optimizer_factory, self.scheduler_factory = optimizer, (scheduler or None)  # {} (scheduler=none): constant
        self.seed, self.probe_every = int(seed), int(probe_every)
        sampler_cfg = model["sampler"]
        self.tokenizer = load_tokenizer(sampler_cfg["name_or_path"], models_dir)
        self.sampler = load_sampler(
            sampler_cfg["name_or_path"], model.get("lora"), models_dir, dtype=sampler_cfg.get("dtype", "float32"),
            load_in_4bit=sampler_cfg.get("load_in_4bit", False), gradient_checkpointing=sampler_cfg.get("gradient_checkpointing", False),
        )
        dropped = disable_dropout(self.sampler)  # LoRA's lora_dropout (the base's is zeroed at load)
        if dropped:
            log.info("LoRA dropout %.2f is off in training: the loss must score the policy that sampled", dropped)
        limits = task.limits
        vocab = self.sampler.get_output_embeddings().weight.size(0)
        term = termination_token_id(self.tokenizer, limits.termination_text)
        forbidden = forbidden_token_mask(self.tokenizer, vocab, list(limits.forbidden), term)
        self.space = ActionSpace(term, forbidden, int(limits.min_len), int(limits.max_len))
        loss.check_space(self.space.min_len)
        # what scores a trajectory, for the replay buffer (the reward's phase is added per step)
        self.sampler_name = str(sampler_cfg["name_or_path"])
        self.settings_signature = json.dumps({
            "task": task.name, "reward": describe_factory(reward), "sampler": sampler_cfg["name_or_path"],
            "vocab": vocab, "termination_id": term, "min_len": self.space.min_len, "max_len": self.space.max_len,
            "forbidden": hashlib.sha1(forbidden.cpu().numpy().tobytes()).hexdigest() if forbidden is not None else None,
            "task_settings": task_hook(task, "settings"),  # what else changes the action space or prompts
        }, sort_keys=True, default=str)
        self.signature = self.signature_for("")
        self.log_z_head = None
        if loss.uses_log_z:
            self.log_z_head = LogZHead(self.sampler.config.get_text_config().hidden_size,
                                       0.0 if loss.logz_init == "auto" else float(loss.logz_init))
        # "auto": set log Z from the first batch (see init_log_z); a number: start there
        self.log_z_ready = self.log_z_head is None or loss.logz_init != "auto"
        self.reward = None
        self.embedder: Embedder | None = None
        self.buffer = None
        self.rng = torch.Generator()
        self.skipped_nonfinite = 0
        self._step_outside_fit = 0  # see ``step``
        self.update_guard = UpdateGuard()  # an update with no finite loss since the last leaves the weights alone
        self.buffer_steps = 0
        self.train_steps = 0  # training steps seen by this rank (batch_idx restarts every epoch)
        self.buffer_unavailable = 0  # buffer calls that failed (Redis lost); the run went on without it
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.probe_rows: list[list[Any]] = []
        self.step_info: dict[str, Any] = {}
        self.sample_log = SampleLog(str(self.gfn["sample_log"]), str(self.gfn.get("sample_log_states", "terminal")),
                                    task.limits.termination_text, self.tokenizer) if self.gfn.get("sample_log") else None
        self.last_source_metrics: dict[str, float] = {}  # rank 0: this step's train/fresh/* and train/replay/* values
        self._prompt_forbidden: dict[str, torch.Tensor] = {}  # prompt -> token ids its record forbids (Task.forbidden_ids)
        self._prompt_owner: dict[str, str] = {}  # prompt -> the record that first gave it a mask (for the clash error)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        self.rng.manual_seed(self.seed * 1000 + self.global_rank)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # refuse records whose masks clash under one prompt before the first step
            self.check_records([*getattr(datamodule, "train_records", []), *getattr(datamodule, "val_records", [])])
        if self.buffer is None:
            self.buffer = self.buffer_factory()
        if self.global_rank == 0:
            self.build_reward()

    def build_reward(self) -> None:
        """Build the reward (and the diversity embedder) here: rank 0, or a single process."""
        if self.reward is None:
            self.reward = self.reward_factory(RewardEnv(
                sampler=self.sampler, tokenizer=self.tokenizer, device=self.device, models_dir=self.models_dir,
                limits=self.task.limits, termination_id=self.space.termination_id, sampler_name=self.sampler_name,
            ))
        embedder = self.gfn.get("diversity_embedder")
        if embedder and self.embedder is None:
            self.embedder = Embedder(resolve(embedder, self.models_dir)[1], device=str(self.device))

    # ------------------------------------------------------------------ buffer signatures
    def signature_for(self, phase: str) -> str:
        return hashlib.sha1(f"{self.settings_signature}|phase={phase}".encode()).hexdigest()[:16]

    def buffer_signature(self) -> str:
        """The signature of the reward at this step: the settings (reward config, action space,
        sampler) and the reward's phase (``Reward.phase(step)``, e.g. the contradiction reward's
        hybrid phase). Rank 0 holds the reward and sends the phase to every rank (collective)."""
        phase = ""
        if self.global_rank == 0 and self.reward is not None and hasattr(self.reward, "phase"):
            phase = str(self.reward.phase(self.step) or "")
        return self.signature_for(distributed.broadcast_from_rank0(phase))

    def on_train_start(self) -> None:
        self.signature = self.buffer_signature()
        if self.buffer is not None and self.global_rank == 0:
            try:
                foreign = self.buffer.foreign(self.signature)
            except ConnectionError:
                foreign = 0
            where = f"namespace {self.buffer.namespace!r}" if hasattr(self.buffer, "namespace") else "the restored buffer"
            if foreign:
                log.warning("replay buffer: %d stored entries under %s were scored by other settings (reward, reward "
                            "phase, action space or sampler) and are ignored; REDIS_NAMESPACE=<namespace>: "
                            "scripts/clean.sh --redis deletes them", foreign, where)

    # ------------------------------------------------------------------ schedules
    @property
    def step(self) -> int:
        """The training step the reward (its phase) and the reward temperature are at: the trainer's
        global step while one is attached, else the step set by ``at_step`` (a loaded checkpoint's,
        for evaluation), else 0."""
        if self._trainer is not None:
            return int(self.global_step)
        return self._step_outside_fit

    def at_step(self, step: int) -> None:
        """Score outside a trainer as at training step ``step`` (``scripts/evaluate.py``: the step of the
        checkpoint it evaluates, so that a hybrid reward's phase and the reward temperature are those
        that checkpoint's log Z and sampler were trained for)."""
        if int(step) < 0:
            raise ValueError(f"at_step({step}): a training step is >= 0")
        self._step_outside_fit = int(step)

    def reward_temperature(self) -> float:
        c = self.gfn["reward_temperature"]
        return linear_schedule(float(c["start"]), float(c["end"]), int(c["horizon"]), self.step)

    def configure_optimizers(self):
        params = [p for p in self.sampler.parameters() if p.requires_grad]
        groups = [{"params": params}]
        if self.log_z_head is not None:
            groups += self.log_z_head.param_groups(float(self.loss.logz_lr))
        opt = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the sampler's and log Z's gradients separately, each to ``trainer.gradient_clip_val``.

        Lightning clips the norm over every parameter at once; log Z's gradient (its balance
        residual in nats, times layer-normed features of norm sqrt(hidden size)) is then most of
        that norm, and clipping it shrinks the sampler's update by the same factor. Both norms
        (before clipping) are logged as ``grad_norm/sampler`` and ``grad_norm/log_z``."""
        groups = optimizer.param_groups
        parts = {"sampler": [p for p in groups[0]["params"] if p.grad is not None],
                 "log_z": [p for g in groups[1:] for p in g["params"] if p.grad is not None]}
        algorithm = str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm) or "norm")
        for name, params in parts.items():
            if not params:
                continue
            if gradient_clip_val is None or algorithm != "norm":
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
                if gradient_clip_val is not None:  # "value": element-wise, nothing shared between the parts
                    torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
            self.log(f"grad_norm/{name}", norm.float(), batch_size=1)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.update_guard.before_step(optimizer)  # core/update_guard.py

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.update_guard.after_step():
            log.warning("update %d: no rank's loss was finite since the last update, so the weights and the "
                        "optimizer state are left as they were (AdamW's momentum and weight decay would have "
                        "moved them)", self.global_step)

    # ------------------------------------------------------------------ public pieces
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
        """Start-up check of a data set (``setup``): every record's prompt and per-record mask, so that a
        clash of masks under one prompt (``prompts_for``) is refused before the first step."""
        if self.per_record_forbidden and records:
            self.prompts_for(list(records))

    @property
    def per_record_forbidden(self) -> bool:
        """Whether the task forbids tokens per record (``Task.forbidden_ids``, optional)."""
        return callable(task_hook(self.task, "forbidden_ids"))

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

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.rng))

    @torch.no_grad()
    def sample(self, prompts: list[str], n: int, explore: bool = False, encoded=None) -> Trajectories:
        """n trajectories per prompt from the sampler.

        ``explore`` (training): the exploration temperature and ``gfn.top_k`` / ``gfn.top_p``
        truncation shape the draw. Otherwise (validation, evaluation, importance estimates) the
        draw is the policy itself, temperature 1 and untruncated, the distribution whose
        log-probabilities ``log P_F`` the samples carry: a truncated draw with untruncated log q
        biases every estimate made from them (on the toy with top_k=2: 6 of 84 sequences seen,
        log Z estimated 3.55 against an exact 5.54)."""
        temp, top_k, top_p = 1.0, None, None
        if explore:
            top_k, top_p = self.gfn.get("top_k"), self.gfn.get("top_p")
            if self._uniform() < self.gfn["pf_temp_prob"]:
                lo, hi = self.gfn["pf_temp_low"], self.gfn["pf_temp_high"]
                temp = lo + (hi - lo) * self._uniform()
        ids, mask = encoded if encoded is not None else self.encode(prompts, n)
        return sample(self.sampler, ids, mask, self.space, self.tokenizer.pad_token_id, temperature=temp,
                      top_k=top_k, top_p=top_p, generator=self.rng,
                      row_forbidden=self.row_forbidden([p for p in prompts for _ in range(n)]))

    def context(self, records: list, n: int) -> dict[str, list]:
        """The record fields the reward needs, one value per trajectory."""
        return {f: [record_field(r, f) for r in records for _ in range(n)] for f in self.task.context_fields}

    def texts(self, question_ids: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return question_texts(self.tokenizer, question_ids, lengths, self.task.limits.termination_text)

    def score_rewards(self, prompts: list[str], question_ids: torch.Tensor, lengths: torch.Tensor, scored: torch.Tensor,
                      context: dict[str, list]) -> RewardOutput:
        """Call the reward directly (rank 0 or a single process; ``build_reward`` first)."""
        if self.reward is None:
            raise RuntimeError("the reward is built on rank 0 only: call build_reward() first (single process)")
        return self.reward(prompts=prompts, question_ids=question_ids.cpu(), lengths=lengths.cpu(), scored=scored.cpu(),
                           step=self.step, **context)

    def rollout(self, records: list, n: int, explore: bool = False, terminal_only: bool = True, store: bool = False,
                collective: bool = True) -> Rollout:
        """Fresh trajectories for ``records`` with their rewards. ``collective``: every rank calls it
        together (``records`` may differ per rank) and rank 0 computes all rewards; otherwise this
        process computes them itself (rank 0 or a single process only, after ``build_reward``)."""
        prompts = self.prompts_for(records)
        traj = self.sample(prompts, n, explore=explore)
        return self._rewarded(records, prompts, n, traj, terminal_only, store, collective)

    def sequence_log_prob(self, prompts: list[str], question_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) exact log-probability of each complete sample under the sampler (temperature 1), one
        teacher-forced pass. ``prompts`` has one entry per row."""
        ids, mask = self.encode(prompts)
        lengths = lengths.to(self.device)
        with torch.no_grad():
            log_pf, log_pterm = score(self.sampler, ids, mask, question_ids.to(self.device), lengths, self.space,
                                      row_forbidden=self.row_forbidden(prompts))
        return losses.trajectory_log_prob(log_pf, log_pterm, lengths)

    # ------------------------------------------------------------------ the rank-0 exchange
    def _rewarded(self, records, prompts, n, traj: Trajectories, terminal_only: bool, store: bool,
                  collective: bool = True) -> Rollout:
        lengths = traj.lengths.cpu()
        scored = self.loss.scored_states(lengths, self.space.min_len, terminal_only=terminal_only)
        request = {
            "prompts": [p for p in prompts for _ in range(n)], "context": self.context(records, n),
            "question_ids": traj.question_ids.cpu(), "lengths": lengths, "scored": scored, "store": store,
        }
        res = self.exchange(request) if collective else self._rank0_rewards([request])[0]
        if res["prompts"] != request["prompts"] or res["context"] != request["context"]:
            raise RuntimeError(f"rank {self.global_rank} received rewards computed for other prompts or records")
        return Rollout(
            prompts=request["prompts"], question_ids=traj.question_ids, lengths=traj.lengths,
            log_r=res["log_r"].to(self.device), scored=scored.to(self.device), samples=res["samples"],
            components=res["components"], texts=res["texts"], source="fresh", pooled_diversity=res["diversity"],
            reward_for={"prompts": res["prompts"], "context": res["context"]},
        )

    def exchange(self, request: dict | None) -> dict | None:
        return distributed.compute_on_rank0(request, self._rank0_rewards if self.global_rank == 0 else None)

    def _rank0_rewards(self, requests: list[dict | None]) -> list[dict | None]:
        """On rank 0: one batched reward call over every rank's fresh trajectories."""
        live = [r for r in requests if r is not None]
        if not live:
            return [None] * len(requests)
        T1 = max(r["question_ids"].size(1) for r in live)
        pad = self.tokenizer.pad_token_id
        ids = torch.cat([nn.functional.pad(r["question_ids"], (0, T1 - r["question_ids"].size(1)), value=pad) for r in live])
        scored = torch.cat([nn.functional.pad(r["scored"], (0, T1 - r["scored"].size(1)), value=False) for r in live])
        lengths = torch.cat([r["lengths"] for r in live])
        prompts = sum((r["prompts"] for r in live), [])
        context = {f: sum((r["context"][f] for r in live), []) for f in live[0]["context"]}
        out = self.score_rewards(prompts, ids, lengths, scored, context)
        samples = self.texts(ids, lengths)
        if self.sample_log is not None:
            self.sample_log.write(self.sample_log_path(), int(self.global_step), self.sample_log_stage(), prompts, samples,
                                  context, lengths, out, ids=ids, scored=scored)
        # the pooled diversity goes back with every rank's result (a rank that replays this step gets only it)
        diversity = semantic_diversity_per_prompt(self.embedder(samples), prompts) if self.embedder is not None else None
        results, start = [], 0
        for r in requests:
            if r is None:
                results.append({"diversity": diversity})
                continue
            B, w = r["lengths"].numel(), r["question_ids"].size(1)
            sl = slice(start, start + B)
            start += B
            results.append({
                "log_r": out.log_r[sl, :w].float(), "samples": samples[sl],
                "components": {k: v[sl].float() for k, v in out.components.items()},
                "texts": {k: v[sl] for k, v in out.texts.items()},
                # what these rewards were computed for, so that each rank can check they are its own
                "prompts": r["prompts"], "context": r["context"], "diversity": diversity,
            })
        if self.buffer is not None and self.buffer.shared:  # one store for all ranks: rank 0 adds every rank's
            for r, res in zip(requests, results):
                if r is not None and r["store"]:
                    self._add_to_buffer(r["prompts"], r["question_ids"], r["lengths"], r["scored"], res)
        return results

    def sample_log_stage(self) -> str:
        """What a sample-log row was scored for: train, val, sanity (Lightning's sanity check), or
        probe (outside fit's loops: the final sample table, evaluation)."""
        if self._trainer is not None and self.trainer.training:
            return "train"
        if self._trainer is not None and self.trainer.sanity_checking:
            return "sanity"
        if self._trainer is not None and self.trainer.validating:
            return "val"
        return "probe"

    def sample_log_path(self) -> Path:
        return self.sample_log.path(self.trainer.default_root_dir if self._trainer is not None else None)

    # ------------------------------------------------------------------ replay buffer
    def _add_to_buffer(self, prompts: list[str], ids, lengths, scored, res: dict) -> None:
        """Store trajectories per prompt (``prompts`` has one entry per trajectory)."""
        for p in dict.fromkeys(prompts):
            rows = [i for i, q in enumerate(prompts) if q == p]
            pick = lambda v: v[rows] if isinstance(v, torch.Tensor) else [v[i] for i in rows]  # noqa: E731
            entries = to_entries(
                pick(ids), pick(lengths), pick(scored), pick(res["log_r"]), pick(res["samples"]),
                {k: pick(v) for k, v in res["components"].items()}, {k: pick(v) for k, v in res["texts"].items()},
                self.signature,
            )
            try:
                self.buffer.add(p, entries, signature=self.signature)
            except ConnectionError as err:
                self.buffer_unavailable += 1
                log.debug("replay buffer unavailable (%s): trajectories not stored", err)

    def _replay(self, prompts: list[str], n: int) -> Rollout | None:
        """Replayed trajectories for every prompt, or None when any prompt has none (then: fresh)."""
        entries: list[BufferEntry] = []
        for p in prompts:
            try:
                got = self.buffer.sample(p, n, self.rng, signature=self.signature)
            except ConnectionError as err:  # BufferUnavailable: the buffer retries with backoff
                self.buffer_unavailable += 1
                log.debug("replay buffer unavailable (%s): on-policy step instead", err)
                return None
            if not got:
                return None
            entries += got
        return entries_to_rollout([p for p in prompts for _ in range(n)], entries, self.tokenizer.pad_token_id, self.device)

    # ------------------------------------------------------------------ the loss
    def score_trajectories(self, prompt_ids, prompt_mask, question_ids, lengths, want_hidden: bool = False,
                           row_prompts: list[str] | None = None):
        """``log_pf``, ``log_pterm`` (and the prompt's last hidden state) of trajectories under the
        sampler, with gradients: the policy that sampled them. Train mode (gradient checkpointing
        acts only there); dropout is off (``modeling.disable_dropout``), as it was while sampling."""
        self.sampler.train()
        rows = self.row_forbidden(row_prompts) if row_prompts is not None else None
        if rows is None and self.per_record_forbidden:
            raise ValueError("this task forbids tokens per record: pass row_prompts to score_trajectories")
        return score(self.sampler, prompt_ids, prompt_mask, question_ids.to(self.device), lengths.to(self.device),
                     self.space, return_prompt_hidden=want_hidden, row_forbidden=rows)

    def gfn_loss(self, prompt_ids, prompt_mask, rollout: Rollout, temperature: float) -> torch.Tensor:
        log_r = rollout.log_r / temperature
        lengths = rollout.lengths.to(self.device)
        log_z = None
        if self.log_z_head is None:
            log_pf, log_pterm = self.score_trajectories(prompt_ids, prompt_mask, rollout.question_ids, lengths,
                                                        row_prompts=rollout.prompts)
        else:
            log_pf, log_pterm, hidden = self.score_trajectories(prompt_ids, prompt_mask, rollout.question_ids, lengths,
                                                                want_hidden=True, row_prompts=rollout.prompts)
            if not self.log_z_ready:
                self.init_log_z(log_pf, log_pterm, log_r, lengths)
            # log Z learns from its own head only; the sampler learns from the balance residuals
            log_z = self.log_z_head(hidden.detach())
        return self.loss(log_pf, log_pterm, log_r, rollout.scored, lengths, log_z)

    @torch.no_grad()
    def init_log_z(self, log_pf, log_pterm, log_r, lengths) -> None:
        """Start log Z at the first batch's importance estimate, log mean exp(log R(x) - log P_F(x)),
        averaged over ranks.

        Z sums R over every possible sample, so log Z starts near log R - log P_F (about +30 for
        SmolLM2 questions of 15 tokens), far from 0. From 0 the balance residuals are tens of nats
        and the sampler is pushed around while log Z climbs at its learning rate; a 30-minute run
        on the contradiction task diverged that way (loss 146 -> 2198 and mean log R -7 -> -35 in
        six steps).
        """
        term_r = log_r.gather(1, lengths[:, None]).squeeze(1).double()
        traj_lp = losses.trajectory_log_prob(log_pf.double(), log_pterm.double(), lengths)
        est = float(torch.logsumexp(term_r - traj_lp, 0) - math.log(term_r.numel()))
        est = distributed.mean_over_ranks(est, device=self.device)
        self.log_z_head.set_constant(est)
        self.log_z_ready = True
        log.info("log Z initialised from the first batch: %.2f", est)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # records are text; tensors are made on the right device in the step

    # ------------------------------------------------------------------ training
    def training_step(self, batch: list, batch_idx: int):
        n = int(self.gfn["n_samples"])
        prompts = self.prompts_for(batch)
        temp = self.reward_temperature()
        # this rank's stream for this step, from (seed, rank, step): ranks differ, resumes repeat it
        self.rng.manual_seed(distributed.stream_seed(self.seed, self.global_rank, self.train_steps))
        self.train_steps += 1
        signature = self.buffer_signature()  # what stored and replayed entries are signed with this step
        if signature != self.signature and self.global_rank == 0:
            log.info("the reward changed phase at step %d: trajectories stored before are not replayed from now on",
                     self.global_step)
        self.signature = signature
        prompt_ids, prompt_mask = self.encode(prompts, n)
        rollout = None
        replay_draw = self._uniform()
        if replay_draw < self.gfn["use_buffer_prob"]:
            rollout = self._replay(prompts, n)
        if rollout is None:
            traj = self.sample(prompts, n, explore=True, encoded=(prompt_ids, prompt_mask))
            rollout = self._rewarded(batch, prompts, n, traj, terminal_only=False, store=True)
            if not self.buffer.shared:  # a per-rank buffer stores its own trajectories
                res = {"log_r": rollout.log_r.cpu(), "samples": rollout.samples, "components": rollout.components,
                       "texts": rollout.texts}
                self._add_to_buffer(rollout.prompts, rollout.question_ids.cpu(), rollout.lengths.cpu(), rollout.scored.cpu(), res)
        else:
            shared = self.exchange(None)  # every rank takes part in the exchange, fresh or not
            rollout.pooled_diversity = shared["diversity"] if shared is not None else None  # other ranks' fresh samples
            self.buffer_steps += 1
        loss = self.gfn_loss(prompt_ids, prompt_mask, rollout, temp)
        # a rank with a non-finite loss sends zero gradients; the finite ranks' losses are scaled
        # so that DDP's average is their mean, not shrunk by the skipping rank
        backward_loss, finite_ranks = distributed.balance_nonfinite(loss, [p for p in self.parameters() if p.requires_grad])
        finite = bool(torch.isfinite(loss))
        if not finite:
            self.skipped_nonfinite += 1
            log.warning("non-finite loss at step %d skipped on rank %d (%d so far)", self.global_step, self.global_rank,
                        self.skipped_nonfinite)
        self.update_guard.saw(finite_ranks)
        self._log_training(batch, n, rollout, loss.detach() if finite else backward_loss.detach(), temp)
        self.step_info.update(replay_draw=replay_draw, finite_ranks=finite_ranks)
        return backward_loss

    def _log_training(self, batch, n: int, rollout: Rollout, loss, temp: float) -> None:
        terminal = rollout.terminal_log_r
        bs = len(rollout)
        lr = self.optimizers().param_groups[0]["lr"] if self._trainer else 0.0
        self.step_info = {  # what this rank did this step (gflownet.core.callbacks.StepTrace writes it out)
            "rank": self.global_rank, "global_step": self.global_step, "source": rollout.source,
            "records": [self.task.describe(r) for r in batch], "scored_prompts": rollout.prompts,
            "context": self.context(batch, n),
            # what rank 0 computed this step's rewards for (fresh steps): the rank's own prompts and records
            "reward_prompts": rollout.reward_for["prompts"] if rollout.reward_for else None,
            "reward_context": rollout.reward_for["context"] if rollout.reward_for else None,
            "reward_temperature": temp, "learning_rate": lr,
            "loss": float(loss.detach()), "mean_log_reward": float(terminal.mean()),
        }
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self._log_by_source(rollout, temp)
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=bs, sync_dist=True, reduce_fx="max")
        self.log("scheduled/reward_temperature", temp, batch_size=bs)
        self.log("scheduled/learning_rate", lr, batch_size=bs)
        try:
            self.log("buffer/size", float(sum(self.buffer.size(p, signature=self.signature) for p in dict.fromkeys(rollout.prompts))),
                     batch_size=bs)
        except ConnectionError:  # BufferUnavailable: already warned; the size is unknown this step
            pass
        self.log("buffer/hit_rate", self.buffer_steps / self.train_steps, batch_size=bs, sync_dist=True)
        self.log("buffer/unavailable", float(self.buffer_unavailable), batch_size=bs, sync_dist=True, reduce_fx="max")
        if self.global_rank == 0 and self.probe_every > 0 and self.global_step % self.probe_every == 0:
            for i in range(min(3, bs)):
                extras = [rollout.texts[k][i] for k in sorted(rollout.texts)]
                comps = [float(rollout.components[k][i]) for k in sorted(rollout.components)]
                self.probe_rows.append([self.global_step, self.task.describe(batch[i // n]), rollout.samples[i], *extras,
                                        float(terminal[i]), *comps])
            self._log_probes(sorted(rollout.texts), sorted(rollout.components))

    def _log_by_source(self, rollout: Rollout, temp: float) -> None:
        """``train/fresh/*`` and ``train/replay/*``: the means of log R, length and each reward
        component over every rank's fresh (sampled this step) and replayed trajectories, apart.

        A replayed trajectory's reward is that of a stored question the buffer keeps because it
        scored well, so a mixed mean would say the sampler got better when replay got more
        frequent. Each rank sends its sums and counts to rank 0 (a gather every step, on every
        rank, whatever its source: a key logged with sync_dist on some ranks only would hang),
        which logs the pooled means of the sources that occurred."""
        terminal = rollout.terminal_log_r.detach().double().cpu()
        sums = {"avg_log_reward_unscaled": (float(terminal.sum()), terminal.numel()),
                "avg_log_reward_scaled": (float((terminal / temp).sum()), terminal.numel()),
                "avg_length": (float(rollout.lengths.double().sum()), rollout.lengths.numel())}
        for name, values in rollout.components.items():
            v = values.detach().double().cpu()
            ok = torch.isfinite(v)  # NaN where a component was not computed (a replayed entry that lacks it)
            sums[f"avg_{name}"] = (float(v[ok].sum()), int(ok.sum()))
        gathered = distributed.gather_to_rank0({rollout.source: sums})
        if gathered is None:
            return
        pooled: dict[str, dict[str, list[float]]] = {}
        for per_rank in gathered:
            for source, metrics in per_rank.items():
                for name, (total, count) in metrics.items():
                    acc = pooled.setdefault(source, {}).setdefault(name, [0.0, 0])
                    acc[0] += total
                    acc[1] += count
        out = {f"train/{source}/{name}": total / count for source, metrics in pooled.items()
               for name, (total, count) in metrics.items() if count}
        if rollout.pooled_diversity is not None:  # computed on rank 0 over this step's fresh samples of every rank
            out["train/fresh/semantic_diversity"] = rollout.pooled_diversity
        reward_metrics = getattr(self.reward, "metrics", None)  # counters of a reward (API requests, cache hits)
        if callable(reward_metrics):
            out.update({f"reward/{k}": float(v) for k, v in reward_metrics().items()})
        self.last_source_metrics = out
        # Straight to the loggers: Lightning re-sends the last value of a key that was not logged at a
        # step, so a replay-only step would show the previous fresh step's numbers as its own.
        for lg in self.loggers:
            lg.log_metrics(out, step=self.global_step)

    def _log_probes(self, text_names, component_names) -> None:
        columns = ["step", "record", "sample", *text_names, "log_reward_unscaled", *component_names]
        rows = [r for r in self.probe_rows[-60:] if len(r) == len(columns)]
        for lg in self.loggers:
            if hasattr(lg, "log_table"):
                lg.log_table(key="generation_probes", columns=columns, data=rows)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: list, batch_idx: int) -> None:
        n = int(self.gfn["n_samples"])
        rollout = self.rollout(batch, n, explore=False, terminal_only=True, store=False)
        bs = len(rollout)
        self.log("val/avg_log_reward_unscaled", rollout.terminal_log_r.mean(), batch_size=bs, sync_dist=True)
        self.log("val/avg_length", rollout.lengths.float().mean(), batch_size=bs, sync_dist=True)
        for name, value in self.task.metrics(rollout).items():
            self.log(f"val/{name}", float(value), batch_size=bs, sync_dist=True)
        if self.global_rank == 0 and rollout.pooled_diversity is not None:
            self.log("val/semantic_diversity", rollout.pooled_diversity, batch_size=bs, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        values = self.exact_values()
        if values is not None and self.global_rank == 0:
            for name, value in values.items():
                self.log(f"val/{name}", float(value), rank_zero_only=True)

    def exact_values(self) -> dict[str, float] | None:
        """The task's ``exact_metrics`` (tasks small enough to enumerate, the known-target toy), computed
        by rank 0, which holds the reward; None on the other ranks and for tasks without them.
        Collective: through the training exchange's ``compute_on_rank0``, so a reward that fails on rank 0
        (an endpoint down, a cache) raises ``Rank0Error`` on every rank instead of leaving the others
        waiting in the next collective."""
        exact = task_hook(self.task, "exact_metrics")
        if exact is None:
            return None

        def compute(requests: list) -> list:
            return [dict(exact(self))] + [None] * (len(requests) - 1)

        return distributed.compute_on_rank0(None, compute if distributed.rank() == 0 else None)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        buffer_state = self.buffer.state() if self.buffer is not None else None
        if buffer_state is not None and buffer_state.get("kind") == "memory":
            # Lightning writes rank 0's checkpoint, but each rank has its own in-memory buffer: keep
            # every rank's (this hook runs on every rank, so the gather is safe)
            states = distributed.gather_to_rank0(buffer_state)
            buffer_state = {"kind": "memory", "per_rank": states}
        checkpoint["gfn_state"] = {  # no generator state: each rank's stream is re-derived per step
            "skipped_nonfinite": self.skipped_nonfinite, "buffer_steps": self.buffer_steps,
            "train_steps": self.train_steps, "log_z_ready": self.log_z_ready, "buffer": buffer_state,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and self.sample_log is not None and self.global_rank == 0:
            self.sample_log.trim(self.sample_log_path(), int(checkpoint.get("global_step", 0)))
        state = checkpoint.get("gfn_state")
        if state:
            self.skipped_nonfinite = state["skipped_nonfinite"]
            self.buffer_steps = state["buffer_steps"]
            self.train_steps = state.get("train_steps", 0)
            self.log_z_ready = state.get("log_z_ready", True)
            saved = state.get("buffer") or {}
            if saved.get("kind") == "memory" and saved.get("per_rank") and hasattr(self.buffer, "load_state"):
                per_rank = saved["per_rank"]
                if len(per_rank) == self.trainer.world_size:  # each rank continues with its own entries
                    restored = self.buffer.load_state(per_rank[self.global_rank])
                else:  # another world size: every rank gets every entry (each replays only its own prompts')
                    restored = sum(self.buffer.load_state(st) for st in per_rank)
                log.info("replay buffer: %d entries restored from the checkpoint (rank %d)", restored, self.global_rank)

