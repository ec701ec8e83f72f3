"""LMGFlowNet: the one LightningModule. It knows nothing of any task; it wires the pieces.

One training step, per rank (docs/design.md has the picture):

1. ``task.prompt`` turns each of the rank's records into the sampler's prompt.
2. With probability ``gfn.use_buffer_prob`` the step replays stored trajectories of those
   prompts; otherwise the sampler draws ``gfn.n_samples`` fresh ones per prompt (no grad, KV
   cache, exploration temperature).
3. Fresh trajectories go through the reward exchange (core/exchange.py): by default to rank 0,
   which calls the reward once for every rank's trajectories, at the states the loss asks for,
   and sends each rank its own unscaled per-state log-rewards and components (only rank 0 builds
   the reward); with ``gfn.reward_placement=per_rank`` each rank scores its own.
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

from gflownet.core import distributed, losses
from gflownet.core.data import unpad
from gflownet.core.exchange import PLACEMENTS, Bookkeeping, RewardExchange, as_output
from gflownet.core.metrics import Embedder, semantic_diversity_per_prompt
from gflownet.core.modeling import resolve
from gflownet.core.policy import Policy
from gflownet.core.protocols import RewardFactory, RewardEnv, RewardOutput, Rollout, Task, record_field, task_hook
from gflownet.core.replay import Replay
from gflownet.core.sample_log import SampleLog
from gflownet.core.sampling import Trajectories
from gflownet.core.schedules import linear_schedule
from gflownet.core.step_metrics import StepMetrics, ValidationMeans
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
    if str(gfn.get("reward_placement", "rank0")) not in PLACEMENTS:
        problems.append(f"gfn.reward_placement={gfn['reward_placement']}: use one of {', '.join(PLACEMENTS)}")
    if int(gfn["n_samples"]) < 1:
        problems.append(f"gfn.n_samples={gfn['n_samples']}: sample at least 1 trajectory per record")
    temp = gfn["reward_temperature"]
    if not (float(temp["start"]) > 0 and float(temp["end"]) > 0):
        problems.append(f"gfn.reward_temperature start={temp['start']} end={temp['end']}: log R is divided by it, use values > 0")
    if problems:
        raise ValueError("bad gfn config: " + "; ".join(problems))


class LMGFlowNet(pl.LightningModule):
    """The training step and its hooks, in the order things happen. The pieces it calls, one job each:

    * ``policy`` (core/policy.py): tokenizer, sampler, action space and masks; samples and scores;
      the log Z head beside it.
    * ``exchange`` (core/exchange.py): fresh trajectories to their rewards, on rank 0 or per rank
      (``gfn.reward_placement``), and rank 0's books over every rank's samples (the sample log,
      the pooled diversity, a shared buffer).
    * ``replay`` (core/replay.py): when a step replays, which entries, storing fresh ones.
    * ``loss`` (core/losses.py): SubTB or TB over the rescored trajectories.
    * ``update_guard`` (core/update_guard.py): an update with no finite loss leaves the weights alone.
    * ``metrics`` (core/step_metrics.py): what a step logs.
    """

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
        self.reward_factory = reward
        self.optimizer_factory, self.scheduler_factory = optimizer, (scheduler or None)  # {} (scheduler=none): constant
        self.seed = int(seed)
        log_z_init = None if not loss.uses_log_z else (0.0 if loss.logz_init == "auto" else float(loss.logz_init))
        self.policy = Policy(task, model["sampler"], model.get("lora"), models_dir, log_z_init)
        # registered here (not inside the policy) so that checkpoints keep their parameter names
        self.sampler, self.log_z_head = self.policy.sampler, self.policy.log_z_head
        self.tokenizer, self.space = self.policy.tokenizer, self.policy.space
        loss.check_space(self.space.min_len)
        # "auto": set log Z from the first batch (see init_log_z); a number: start there
        self.log_z_ready = self.log_z_head is None or loss.logz_init != "auto"
        # what scores a trajectory, for the replay buffer (the reward's phase is added per step)
        forbidden = self.policy.forbidden
        self.settings_signature = json.dumps({
            "task": task.name, "reward": describe_factory(reward), "sampler": self.policy.name,
            "vocab": self.policy.vocab_size, "termination_id": self.space.termination_id, "min_len": self.space.min_len,
            "max_len": self.space.max_len,
            "forbidden": hashlib.sha1(forbidden.cpu().numpy().tobytes()).hexdigest() if forbidden is not None else None,
            "task_settings": task_hook(task, "settings"),  # what else changes the action space or prompts
        }, sort_keys=True, default=str)
        self.signature = self.signature_for("")
        self.reward = None
        self.embedder: Embedder | None = None
        self.exchange = RewardExchange(str(gfn.get("reward_placement", "rank0")), self.compute_rewards, self.policy.texts,
                                       self.tokenizer.pad_token_id, self._bookkeeping)
        self.replay = Replay(buffer, gfn["use_buffer_prob"], self.tokenizer.pad_token_id)
        self.update_guard = UpdateGuard()
        self.metrics = StepMetrics(probe_every)
        self.val_means = ValidationMeans()  # an epoch's accumulator: reset at each validation epoch's start
        self.sample_log = SampleLog(str(gfn["sample_log"]), str(gfn.get("sample_log_states", "terminal")),
                                    task.limits.termination_text, self.tokenizer) if gfn.get("sample_log") else None
        self.rng = torch.Generator()
        self.skipped_nonfinite = 0
        self.train_steps = 0  # training steps seen by this rank (batch_idx restarts every epoch)
        self._step_outside_fit = 0  # see ``step``
        self.strict_loading = False  # checkpoints hold only the trainable weights

    # ------------------------------------------------------------------ the training step
    def training_step(self, batch: list, batch_idx: int):
        n = int(self.gfn["n_samples"])
        prompts = self.prompts_for(batch)
        temp = self.reward_temperature()
        # this rank's stream for this step, from (seed, rank, step): ranks differ, resumes repeat it
        self.rng.manual_seed(distributed.stream_seed(self.seed, self.global_rank, self.train_steps))
        self.train_steps += 1
        self.sign_step()
        prompt_ids, prompt_mask = self.encode(prompts, n)
        replay_draw = self._uniform()
        rollout = self.replay.draw(prompts, n, self.rng, self.signature, self.device) if self.replay.wanted(replay_draw) else None
        if rollout is None:
            traj = self.sample(prompts, n, explore=True, encoded=(prompt_ids, prompt_mask))
            rollout = self._rewarded(batch, prompts, n, traj, terminal_only=False, store=True)
            if not self.buffer.shared:  # a per-rank buffer stores its own trajectories
                self.replay.store(rollout.prompts, rollout.sample_ids.cpu(), rollout.lengths.cpu(), rollout.scored.cpu(),
                                  {"log_r": rollout.log_r.cpu(), "samples": rollout.samples,
                                   "components": rollout.components, "texts": rollout.texts}, self.signature)
        else:
            shared = self.exchange(None)  # every rank takes part in the exchange, fresh or not
            rollout.pooled_diversity = shared["diversity"] if shared is not None else None  # other ranks' fresh samples
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
        shown_loss = loss.detach() if finite else backward_loss.detach()
        lr = self.optimizers().param_groups[0]["lr"] if self._trainer else 0.0
        by_source = self.metrics.log(self, batch, n, rollout, shown_loss, temp, lr)
        trace = self.step_trace(batch, n, rollout, shown_loss, temp, lr, replay_draw=replay_draw, finite_ranks=finite_ranks)
        return {"loss": backward_loss, "trace": trace, "by_source": by_source}

    def sign_step(self) -> None:
        """The signature stored and replayed entries carry this step (the reward's phase may change it)."""
        signature = self.buffer_signature()
        if signature != self.signature and self.global_rank == 0:
            log.info("the reward changed phase at step %d: trajectories stored before are not replayed from now on",
                     self.global_step)
        self.signature = signature

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
        return self.policy.draw(prompts, n, temperature=temp, top_k=top_k, top_p=top_p, generator=self.rng, encoded=encoded)

    def _rewarded(self, records, prompts, n, traj: Trajectories, terminal_only: bool, store: bool,
                  collective: bool = True) -> Rollout:
        """Fresh trajectories with their rewards, through the exchange."""
        lengths = traj.lengths.cpu()
        scored = self.loss.scored_states(lengths, self.space.min_len, terminal_only=terminal_only)
        request = self.exchange.request([p for p in prompts for _ in range(n)], self.context(records, n),
                                        traj.sample_ids, lengths, scored, store)
        res = self.exchange(request, collective=collective)
        if res["prompts"] != request["prompts"] or res["context"] != request["context"]:
            raise RuntimeError(f"rank {self.global_rank} received rewards computed for other prompts or records")
        return Rollout(
            prompts=request["prompts"], sample_ids=traj.sample_ids, lengths=traj.lengths,
            log_r=res["log_r"].to(self.device), scored=scored.to(self.device), samples=res["samples"],
            components=res["components"], texts=res["texts"], source="fresh", pooled_diversity=res["diversity"],
            reward_for={"prompts": res["prompts"], "context": res["context"]},
        )

    def gfn_loss(self, prompt_ids, prompt_mask, rollout: Rollout, temperature: float) -> torch.Tensor:
        log_r = rollout.log_r / temperature
        lengths = rollout.lengths.to(self.device)
        log_z = None
        if self.log_z_head is None:
            log_pf, log_pterm = self.score_trajectories(prompt_ids, prompt_mask, rollout.sample_ids, lengths,
                                                        row_prompts=rollout.prompts)
        else:
            log_pf, log_pterm, hidden = self.score_trajectories(prompt_ids, prompt_mask, rollout.sample_ids, lengths,
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

    def step_trace(self, batch, n: int, rollout: Rollout, loss, temp: float, lr: float, **extra) -> dict[str, Any]:
        """What this rank did this step (``gflownet.core.callbacks.StepTrace`` writes it out)."""
        return {
            "rank": self.global_rank, "global_step": self.global_step, "source": rollout.source,
            "records": [self.task.describe(r) for r in batch], "scored_prompts": rollout.prompts,
            "context": self.context(batch, n),
            # what the exchange computed this step's rewards for (fresh steps): the rank's own prompts and records
            "reward_prompts": rollout.reward_for["prompts"] if rollout.reward_for else None,
            "reward_context": rollout.reward_for["context"] if rollout.reward_for else None,
            "reward_temperature": temp, "learning_rate": lr,
            "loss": float(loss.detach()), "mean_log_reward": float(rollout.terminal_log_r.mean()), **extra,
        }

    # ------------------------------------------------------------------ the update
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

    # ------------------------------------------------------------------ setup and start
    def setup(self, stage: str) -> None:
        self.rng.manual_seed(self.seed * 1000 + self.global_rank)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # refuse records whose masks clash under one prompt before the first step
            self.check_records([*getattr(datamodule, "train_records", []), *getattr(datamodule, "val_records", [])])
        self.replay.build()
        if self.exchange.builds_reward_on(self.global_rank):
            self.build_reward()

    def build_reward(self) -> None:
        """Build the reward (rank 0 or, with ``gfn.reward_placement=per_rank``, every rank) and, on rank 0
        or a single process, the diversity embedder."""
        if self.reward is None:
            self.reward = self.reward_factory(RewardEnv(
                sampler=self.sampler, tokenizer=self.tokenizer, device=self.device, models_dir=self.models_dir,
                limits=self.task.limits, termination_id=self.space.termination_id, sampler_name=self.policy.name,
            ))
        embedder = self.gfn.get("diversity_embedder")
        if embedder and self.embedder is None and self.global_rank == 0:
            self.embedder = Embedder(resolve(embedder, self.models_dir)[1], device=str(self.device))

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

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # records are text; tensors are made on the right device in the step

    # ------------------------------------------------------------------ schedules and signatures
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

    def signature_for(self, phase: str) -> str:
        return hashlib.sha1(f"{self.settings_signature}|phase={phase}".encode()).hexdigest()[:16]

    def buffer_signature(self) -> str:
        """The signature of the reward at this step: the settings (reward config, action space,
        sampler) and the reward's phase (``Reward.phase(step)``, e.g. the contradiction reward's
        hybrid phase). Rank 0's reward gives the phase to every rank (collective)."""
        phase = ""
        if self.global_rank == 0 and self.reward is not None and hasattr(self.reward, "phase"):
            phase = str(self.reward.phase(self.step) or "")
        return self.signature_for(distributed.broadcast_from_rank0(phase))

    # ------------------------------------------------------------------ public pieces (tasks, scripts, tests)
    @property
    def buffer(self):
        return self.replay.buffer

    @buffer.setter
    def buffer(self, value) -> None:
        self.replay.buffer = value

    @property
    def buffer_factory(self):
        return self.replay.buffer_factory

    def prompts_for(self, records: list) -> list[str]:
        """The sampler's prompt of each record (``Policy.prompts_for``: per-record masks noted by prompt)."""
        return self.policy.prompts_for(records)

    def check_records(self, records: list) -> None:
        self.policy.check_records(records)

    @property
    def per_record_forbidden(self) -> bool:
        return self.policy.per_record_forbidden

    def row_forbidden(self, row_prompts: list[str]) -> torch.Tensor | None:
        return self.policy.row_forbidden(row_prompts)

    def encode(self, prompts: list[str], n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask of each prompt repeated n times (one row per trajectory)."""
        return self.policy.encode(prompts, n)

    def texts(self, sample_ids: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return self.policy.texts(sample_ids, lengths)

    def score_trajectories(self, prompt_ids, prompt_mask, sample_ids, lengths, want_hidden: bool = False,
                           row_prompts: list[str] | None = None):
        """``Policy.score``: log P_F of trajectories with gradients, as the sampler drew them."""
        return self.policy.score(prompt_ids, prompt_mask, sample_ids, lengths, want_hidden, row_prompts)

    def sequence_log_prob(self, prompts: list[str], sample_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) exact log-probability of each complete sample under the sampler (temperature 1)."""
        return self.policy.sequence_log_prob(prompts, sample_ids, lengths)

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.rng))

    def context(self, records: list, n: int) -> dict[str, list]:
        """The record fields the reward needs, one value per trajectory."""
        return {f: [record_field(r, f) for r in records for _ in range(n)] for f in self.task.context_fields}

    def compute_rewards(self, row_prompts: list[str], sample_ids: torch.Tensor, lengths: torch.Tensor, scored: torch.Tensor,
                        context: dict[str, list]) -> RewardOutput:
        """Call the reward directly (where it is built; ``build_reward`` first in a single process).
        ``row_prompts`` and ``context`` hold one value per trajectory (``sample`` and ``rollout`` take
        one prompt or record per record and draw ``n`` each); the log-probabilities of the policy are
        ``score_trajectories``'."""
        if self.reward is None:
            raise RuntimeError("the reward is not built in this process: call build_reward() first (single process), "
                               "or score through the exchange (rank 0 holds the reward under gfn.reward_placement=rank0)")
        return self.reward(prompts=row_prompts, sample_ids=sample_ids.cpu(), lengths=lengths.cpu(), scored=scored.cpu(),
                           step=self.step, **context)

    def rollout(self, records: list, n: int, explore: bool = False, terminal_only: bool = True, store: bool = False,
                collective: bool = True) -> Rollout:
        """Fresh trajectories for ``records`` with their rewards. ``collective``: every rank calls it
        together (``records`` may differ per rank) and the exchange computes the rewards; otherwise
        this process computes them itself (after ``build_reward``)."""
        prompts = self.prompts_for(records)
        traj = self.sample(prompts, n, explore=explore)
        return self._rewarded(records, prompts, n, traj, terminal_only, store, collective)

    # ------------------------------------------------------------------ rank 0's books
    def _bookkeeping(self) -> Bookkeeping:
        """What rank 0 does with every rank's freshly scored trajectories (``RewardExchange``)."""
        log_samples = None
        if self.sample_log is not None:
            path, step, stage = self.sample_log_path(), int(self.global_step), self.sample_log_stage()

            def log_samples(r: dict, res: dict) -> None:
                self.sample_log.write(path, step, stage, r["prompts"], res["samples"], r["context"], r["lengths"],
                                      as_output(res), ids=r["sample_ids"], scored=r["scored"])

        store = None
        if self.buffer is not None and self.buffer.shared:  # one store for all ranks: rank 0 adds every rank's

            def store(r: dict, res: dict) -> None:
                self.replay.store(r["prompts"], r["sample_ids"], r["lengths"], r["scored"], res, self.signature)

        diversity = None
        if self.embedder is not None:
            diversity = lambda samples, prompts: semantic_diversity_per_prompt(self.embedder(samples), prompts)  # noqa: E731
        return Bookkeeping(log_samples=log_samples, diversity=diversity, store=store)

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

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.val_means = ValidationMeans()

    def validation_step(self, batch: list, batch_idx: int) -> None:
        n = int(self.gfn["n_samples"])
        batch, real = unpad(batch)  # under DDP, records repeated to even out the ranks count for nothing
        rollout = self.rollout(batch, n, explore=False, terminal_only=True, store=False)
        rows = [b * n + j for b, ok in enumerate(real) if ok for j in range(n)]
        part = rollout.select(rows) if rows and len(rows) < len(rollout) else rollout
        self.val_means.add({"avg_log_reward_unscaled": part.terminal_log_r.mean(), "avg_length": part.lengths.float().mean(),
                            **self.task.metrics(part)}, weight=len(rows))
        if self.global_rank == 0 and rollout.pooled_diversity is not None:
            self.log("val/semantic_diversity", rollout.pooled_diversity, batch_size=len(rollout), rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_means.means(self.device).items():
            self.log(f"val/{name}", value, sync_dist=True)  # the same value on every rank
        values = self.exact_values()
        if values is not None and self.global_rank == 0:
            for name, value in values.items():
                self.log(f"val/{name}", float(value), rank_zero_only=True)

    def exact_values(self) -> dict[str, float] | None:
        """The task's ``exact_metrics`` (tasks small enough to enumerate, the known-target toy), computed
        by rank 0, which holds the reward; None on the other ranks and for tasks without them.
        Collective: through ``compute_on_rank0``, so a reward that fails on rank 0 (an endpoint down, a
        cache) raises ``Rank0Error`` on every rank instead of leaving the others waiting in the next
        collective."""
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
            "skipped_nonfinite": self.skipped_nonfinite, "buffer_steps": self.replay.steps,
            "train_steps": self.train_steps, "log_z_ready": self.log_z_ready, "buffer": buffer_state,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and self.sample_log is not None and self.global_rank == 0:
            self.sample_log.trim(self.sample_log_path(), int(checkpoint.get("global_step", 0)))
        state = checkpoint.get("gfn_state")
        if state:
            self.skipped_nonfinite = state["skipped_nonfinite"]
            self.replay.steps = state["buffer_steps"]
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
