"""ContradictionGFNTask: the training step, schedules and logging. It only wires the pieces:

sample (``sampling.sample``, no grad) or replay (buffer) -> rewards computed on rank 0 for every
rank's fresh trajectories (``distributed.compute_on_rank0``) -> rescore with gradients
(``sampling.score``, always after each trajectory's own prompt) -> ``losses.subtb_loss`` /
``losses.tb_loss``. Only rank 0 loads the answerer, judge and diversity embedder.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from torch import nn

from gflownet import distributed, losses
from gflownet.data import EditRecord
from gflownet.metrics import Embedder, contradiction_rate, semantic_diversity
from gflownet.modeling import load_causal_lm, load_sampler, load_tokenizer, resolve
from gflownet.replay_buffer import BufferEntry, entries_to_batch
from gflownet.answerer import Answerer
from gflownet.reward import ContradictionReward, RewardOutput, linear_schedule
from gflownet.sampling import (
    ActionSpace, Trajectories, build_prompt, encode_prompts, forbidden_token_mask, sample, score, termination_token_id,
)

log = logging.getLogger(__name__)

REWARD_KEYS = ("judge", "answer", "temperature")


def check_task_config(task: dict) -> None:
    """Reject values that would fail (or silently mean something else) later in a run."""
    problems = []
    for key in ("use_buffer_prob", "pf_temp_prob"):
        if not 0.0 <= float(task[key]) <= 1.0:
            problems.append(f"task.{key}={task[key]} is a probability: use a value in [0, 1]")
    if not 0.0 < float(task["pf_temp_low"]) <= float(task["pf_temp_high"]):
        problems.append(f"task.pf_temp_low={task['pf_temp_low']} and task.pf_temp_high={task['pf_temp_high']}: "
                        "exploration temperatures need 0 < pf_temp_low <= pf_temp_high")
    if int(task["n_samples"]) < 1:
        problems.append(f"task.n_samples={task['n_samples']}: sample at least 1 question per record")
    if not float(task["lr"]) > 0.0:
        problems.append(f"task.lr={task['lr']}: the learning rate must be positive")
    if problems:
        raise ValueError("bad task config: " + "; ".join(problems))


class ContradictionGFNTask(pl.LightningModule):
    def __init__(self, model: dict, reward: dict, loss: dict, buffer: dict, task: dict, models_dir: str, seed: int = 0,
                 probe_every: int = 10):
        super().__init__()
        self.save_hyperparameters()
        self.models_dir = models_dir
        self.task_cfg, self.reward_cfg, self.loss_cfg, self.buffer_cfg, self.model_cfg = task, reward, loss, buffer, model
        if loss["name"] not in {"subtb", "tb"}:
            raise ValueError(f"unknown loss.name {loss['name']!r}: use subtb or tb")
        check_task_config(task)
        sampler_cfg = model["sampler"]
        self.tokenizer = load_tokenizer(sampler_cfg["name_or_path"], models_dir)
        self.sampler = load_sampler(
            sampler_cfg["name_or_path"], model.get("lora"), models_dir, dtype=sampler_cfg.get("dtype", "float32"),
            load_in_4bit=sampler_cfg.get("load_in_4bit", False), gradient_checkpointing=sampler_cfg.get("gradient_checkpointing", False),
        )
        vocab = self.sampler.get_output_embeddings().weight.size(0)
        term = termination_token_id(self.tokenizer)
        self.space = ActionSpace(
            term, forbidden_token_mask(self.tokenizer, vocab, list(task["forbidden_tokens"]), term),
            int(task["min_question_len"]), int(task["max_question_len"]),
        )
        hidden = self.sampler.config.get_text_config().hidden_size
        uses_log_z = loss["name"] == "tb" or loss.get("root_flow", False)
        self.log_z_head = nn.Linear(hidden, 1) if uses_log_z else None
        if self.log_z_head is not None:
            nn.init.zeros_(self.log_z_head.weight)
            init = loss.get("logz_init", "auto")
            nn.init.constant_(self.log_z_head.bias, 0.0 if init == "auto" else float(init))
        # "auto": set log Z from the first batch (see init_log_z); a number: start there
        self.log_z_ready = self.log_z_head is None or loss.get("logz_init", "auto") != "auto"
        self.reward_fn: ContradictionReward | None = None
        self.embedder: Embedder | None = None
        self.buffer = None
        self.rng = torch.Generator()
        self.skipped_nonfinite = 0
        self.buffer_steps = 0
        self.train_steps = 0  # training steps seen by this rank (batch_idx restarts every epoch)
        self.buffer_unavailable = 0  # buffer calls that failed (Redis lost); the run went on without it
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.probe_rows: list[list[Any]] = []
        self.step_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        self.rng.manual_seed(int(self.hparams.seed) * 1000 + self.global_rank)
        if self.buffer is None:
            self.buffer = hydra.utils.instantiate(self.buffer_cfg)
        if self.global_rank == 0 and self.reward_fn is None:
            self.reward_fn = self._build_reward()
            self.embedder = Embedder(resolve("packaged:all-minilm-l6-v2", self.models_dir)[1], device=str(self.device))

    def _build_reward(self) -> ContradictionReward:
        rc, ans_cfg = self.reward_cfg, self.model_cfg["answerer"]
        shared = ans_cfg.get("name_or_path", "shared") == "shared"
        if shared:
            model, tokenizer = self.sampler, self.tokenizer
        else:
            model = load_causal_lm(ans_cfg["name_or_path"], self.models_dir, dtype=ans_cfg.get("dtype", "float32")).to(self.device)
            tokenizer = load_tokenizer(ans_cfg["name_or_path"], self.models_dir)
            if tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise ValueError("a separate answerer must share the sampler's tokenizer (it scores the sampler's token ids)")
        answerer = Answerer(model, tokenizer, disable_adapters=shared, **rc["answer"])
        judge = hydra.utils.instantiate(rc["judge"], device=str(self.device))  # rank 0's GPU in DDP runs
        kwargs = {k: v for k, v in rc.items() if k not in REWARD_KEYS}
        return ContradictionReward(
            answerer, judge, model, tokenizer, min_question_len=self.space.min_len, temperature=rc["temperature"],
            disable_adapters=shared, **kwargs,
        )

    # ------------------------------------------------------------------ schedules
    def reward_temperature(self) -> float:
        c = self.reward_cfg["temperature"]
        return linear_schedule(float(c["start"]), float(c["end"]), int(c["horizon"]), self.global_step)

    def configure_optimizers(self):
        params = [p for p in self.sampler.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": self.task_cfg["lr"], "weight_decay": self.task_cfg.get("weight_decay", 0.0)}]
        if self.log_z_head is not None:
            groups.append({"params": list(self.log_z_head.parameters()), "lr": self.loss_cfg["logz_lr"], "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups)
        warmup = max(int(self.task_cfg.get("warmup_steps", 0)), 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ pieces of a step
    def prompt_for(self, record: EditRecord) -> str:
        return build_prompt(self.tokenizer, record.subject, self.model_cfg.get("prompt_style", "plain"))

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.rng))

    def encode(self, prompts: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask of each prompt repeated n times (one row per trajectory)."""
        return encode_prompts(self.tokenizer, [p for p in prompts for _ in range(n)], self.device)

    def sample_fresh(self, prompts: list[str], n: int, explore: bool, encoded=None) -> Trajectories:
        temp = 1.0
        if explore and self._uniform() < self.task_cfg["pf_temp_prob"]:
            lo, hi = self.task_cfg["pf_temp_low"], self.task_cfg["pf_temp_high"]
            temp = lo + (hi - lo) * self._uniform()
        ids, mask = encoded if encoded is not None else self.encode(prompts, n)
        return sample(self.sampler, ids, mask, self.space, self.tokenizer.pad_token_id, temperature=temp,
                      top_k=self.task_cfg.get("top_k"), top_p=self.task_cfg.get("top_p"), generator=self.rng)

    def _rank0_rewards(self, requests: list[dict | None]) -> list[dict | None]:
        """On rank 0: one batched reward call over every rank's fresh trajectories."""
        live = [r for r in requests if r is not None]
        if not live:
            return [None] * len(requests)
        T1 = max(r["question_ids"].size(1) for r in live)
        pad = self.tokenizer.pad_token_id
        ids = torch.cat([nn.functional.pad(r["question_ids"], (0, T1 - r["question_ids"].size(1)), value=pad) for r in live])
        out = self.reward_fn(
            sum((r["prompts"] for r in live), []), sum((r["edit_facts"] for r in live), []),
            sum((r["original_facts"] for r in live), []), ids, torch.cat([r["lengths"] for r in live]), self.global_step,
            terminal_only=live[0]["terminal_only"],
        )
        div = None
        if self.embedder is not None:
            div = semantic_diversity(self.embedder(out.questions))
        results, start = [], 0
        for r in requests:
            if r is None:
                results.append(None)
                continue
            n, w = r["lengths"].numel(), r["question_ids"].size(1)
            sl = slice(start, start + n)
            start += n
            results.append({
                "log_r_unscaled": out.log_r_unscaled[sl, :w], "scored": out.scored[sl, :w], "log_c": out.log_c[sl],
                "log_p": out.log_p[sl], "questions": out.questions[sl], "answers": out.answers[sl],
                # what these rewards were computed for, so that each rank can check they are its own
                "prompts": r["prompts"], "edit_facts": r["edit_facts"],
            })
        self._last_diversity = div
        if self.buffer.shared:  # one store for all ranks: rank 0 adds every rank's
            for r, res in zip(requests, results):
                if r is not None and r["store"]:
                    self._add_to_buffer(r["prompts"][:: r["n"]], r["n"], r["question_ids"], r["lengths"], res)
        return results

    @staticmethod
    def _request(batch: list[EditRecord], prompts: list[str], n: int, traj: Trajectories, terminal_only: bool,
                 store: bool = True) -> dict:
        """What rank 0 needs to reward this rank's trajectories (n per record, in record order);
        ``store``: training trajectories go to a shared buffer, validation ones do not."""
        return {
            "prompts": [p for p in prompts for _ in range(n)],
            "edit_facts": [r.edit_fact for r in batch for _ in range(n)],
            "original_facts": [r.original_fact for r in batch for _ in range(n)],
            "question_ids": traj.question_ids.cpu(), "lengths": traj.lengths.cpu(), "terminal_only": terminal_only,
            "n": n, "store": store,
        }

    def exchange(self, request: dict | None) -> dict | None:
        return distributed.compute_on_rank0(request, self._rank0_rewards if self.global_rank == 0 else None)

    def _to_entries(self, traj_ids: torch.Tensor, lengths: torch.Tensor, res: dict) -> list[BufferEntry]:
        entries = []
        for b in range(lengths.numel()):
            L = int(lengths[b])
            log_r = [float(v) if s else None for v, s in zip(res["log_r_unscaled"][b, : L + 1].tolist(), res["scored"][b, : L + 1].tolist())]
            reward = log_r[L]
            if reward is None or not math.isfinite(reward):
                continue
            comp = {"log_c": float(res["log_c"][b]), "log_p": float(res["log_p"][b]), "answer": res["answers"][b]}
            comp = {k: v for k, v in comp.items() if not (isinstance(v, float) and not math.isfinite(v))}
            entries.append(BufferEntry(res["questions"][b], traj_ids[b, : L + 1].tolist(), log_r, reward, comp))
        return entries

    def gfn_loss(self, prompt_ids, prompt_mask, question_ids, lengths, log_r, scored) -> torch.Tensor:
        self.sampler.train()
        log_z = None
        if self.log_z_head is None:
            log_pf, log_pterm = score(self.sampler, prompt_ids, prompt_mask, question_ids, lengths, self.space)
        else:
            log_pf, log_pterm, hidden = score(self.sampler, prompt_ids, prompt_mask, question_ids, lengths, self.space,
                                              return_prompt_hidden=True)
            if not self.log_z_ready:
                self.init_log_z(log_pf, log_pterm, log_r, lengths)
            # log Z learns from its own head only; the sampler learns from the balance residuals
            log_z = self.log_z_head(hidden.detach().float()).squeeze(-1)
        if self.loss_cfg["name"] == "subtb":
            return losses.subtb_loss(log_pf, log_pterm, log_r, scored, lengths, float(self.loss_cfg["subtb_lambda"]), log_z=log_z)
        terminal = log_r.gather(1, lengths[:, None]).squeeze(1)
        return losses.tb_loss(log_pf, log_pterm, terminal, log_z, lengths)

    @torch.no_grad()
    def init_log_z(self, log_pf, log_pterm, log_r, lengths) -> None:
        """Start log Z at the first batch's importance estimate, log mean exp(log R(x) - log P_F(x)),
        averaged over ranks.

        Z sums R over every possible question, so log Z starts near log R - log P_F (about +30 for
        SmolLM2 questions of 15 tokens), far from 0. From 0 the balance residuals are tens of nats
        and the sampler is pushed around while log Z climbs at its learning rate; a 30-minute run
        on the offline default diverged that way (loss 146 -> 2198 and mean log R -7 -> -35 in
        six steps).
        """
        term_r = log_r.gather(1, lengths[:, None]).squeeze(1).double()
        traj_lp = (log_pf.double().sum(1) + log_pterm.double().gather(1, lengths[:, None]).squeeze(1))
        est = float(torch.logsumexp(term_r - traj_lp, 0) - math.log(term_r.numel()))
        est = distributed.mean_over_ranks(est, device=self.device)
        self.log_z_head.weight.zero_()
        self.log_z_head.bias.fill_(est)
        self.log_z_ready = True
        log.info("log Z initialised from the first batch: %.2f", est)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # edit records are text; tensors are made on the right device in the step

    # ------------------------------------------------------------------ training
    def training_step(self, batch: list[EditRecord], batch_idx: int):
        n = int(self.task_cfg["n_samples"])
        prompts = [self.prompt_for(r) for r in batch]
        temp = self.reward_temperature()
        self.train_steps += 1
        prompt_ids, prompt_mask = self.encode(prompts, n)
        replay = None
        if self._uniform() < self.task_cfg["use_buffer_prob"]:
            replay = self._replay(prompts, n)
        request = None
        if replay is None:
            traj = self.sample_fresh(prompts, n, explore=True, encoded=(prompt_ids, prompt_mask))
            request = self._request(batch, prompts, n, traj, terminal_only=self.loss_cfg["name"] == "tb")
        res = self.exchange(request)  # every rank takes part, fresh or not
        if replay is None:
            if res["prompts"] != request["prompts"] or res["edit_facts"] != request["edit_facts"]:
                raise RuntimeError(f"rank {self.global_rank} received rewards computed for other prompts or edits")
            question_ids, lengths = traj.question_ids, traj.lengths
            log_r_unscaled, scored = res["log_r_unscaled"].to(self.device), res["scored"].to(self.device)
            if not self.buffer.shared:  # a per-rank buffer stores its own trajectories
                self._add_to_buffer(prompts, n, traj.question_ids.cpu(), traj.lengths.cpu(), res)
            log_c, log_p, questions, answers = res["log_c"], res["log_p"], res["questions"], res["answers"]
        else:
            question_ids, lengths, log_r_unscaled, scored, log_c, log_p, questions, answers = replay
            self.buffer_steps += 1
        question_ids, lengths = question_ids.to(self.device), lengths.to(self.device)
        log_r = log_r_unscaled / temp
        loss = self.gfn_loss(prompt_ids, prompt_mask, question_ids, lengths, log_r, scored)
        if not torch.isfinite(loss):
            self.skipped_nonfinite += 1
            log.warning("non-finite loss at step %d skipped (%d so far)", self.global_step, self.skipped_nonfinite)
            loss = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)  # zero gradient, DDP-safe

        terminal = log_r_unscaled.gather(1, lengths[:, None]).squeeze(1)
        bs = lengths.numel()
        lr = self.optimizers().param_groups[0]["lr"] if self._trainer else 0.0
        self.step_info = {  # what this rank did this step (gflownet.callbacks.StepTrace writes it out)
            "rank": self.global_rank, "global_step": self.global_step, "source": "fresh" if replay is None else "replay",
            "subjects": [r.subject for r in batch], "scored_prompts": [p for p in prompts for _ in range(n)],
            "reward_prompts": res["prompts"] if replay is None else None,
            "reward_edit_facts": res["edit_facts"] if replay is None else None,
            "edit_facts": [r.edit_fact for r in batch for _ in range(n)],
            "reward_temperature": temp, "learning_rate": lr,
            "loss": float(loss.detach()), "mean_log_reward": float(terminal.mean()),
        }
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/avg_log_reward_unscaled", terminal.mean(), prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/avg_log_reward_scaled", (terminal / temp).mean(), batch_size=bs, sync_dist=True)
        self.log("train/avg_question_len", lengths.float().mean(), batch_size=bs, sync_dist=True)
        # log C is NaN where the judge was not asked (a replayed entry that lacks it): average the rest
        self.log("train/avg_log_contradiction", log_c.float().nanmean().to(self.device), batch_size=bs, sync_dist=True)
        self.log("train/avg_log_likelihood", log_p.float().nanmean().to(self.device), batch_size=bs, sync_dist=True)
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=bs, sync_dist=True, reduce_fx="max")
        self.log("scheduled/reward_temperature", temp, batch_size=bs)
        self.log("scheduled/learning_rate", lr, batch_size=bs)
        try:
            self.log("buffer/size", float(sum(self.buffer.size(p) for p in prompts)), batch_size=bs)
        except ConnectionError:  # BufferUnavailable: already warned; the size is unknown this step
            pass
        self.log("buffer/hit_rate", self.buffer_steps / self.train_steps, batch_size=bs, sync_dist=True)
        self.log("buffer/unavailable", float(self.buffer_unavailable), batch_size=bs, sync_dist=True, reduce_fx="max")
        if self.global_rank == 0 and replay is None and getattr(self, "_last_diversity", None) is not None:
            self.log("train/semantic_diversity", self._last_diversity, batch_size=bs, rank_zero_only=True)
        if self.global_rank == 0 and self.global_step % int(self.hparams.probe_every) == 0:
            for i in range(min(3, bs)):
                self.probe_rows.append([self.global_step, batch[i // n].subject, questions[i], answers[i],
                                        float(terminal[i]), float(log_c[i]), float(log_p[i])])
            self._log_probes()
        return loss

    def _replay(self, prompts: list[str], n: int):
        """Replayed trajectories for every prompt, or None when any prompt has none (then: fresh)."""
        entries: list[BufferEntry] = []
        for p in prompts:
            try:
                got = self.buffer.sample(p, n, self.rng)
            except ConnectionError as err:  # BufferUnavailable: the buffer retries with backoff
                self.buffer_unavailable += 1
                log.debug("replay buffer unavailable (%s): on-policy step instead", err)
                return None
            if not got:
                return None
            entries += got
        ids, lengths, log_r, scored = entries_to_batch(entries, self.tokenizer.pad_token_id)
        comp = [e.components for e in entries]
        log_c = torch.tensor([float(c.get("log_c", float("nan"))) for c in comp])
        log_p = torch.tensor([float(c.get("log_p", float("nan"))) for c in comp])
        return ids, lengths, log_r.to(self.device), scored.to(self.device), log_c, log_p, [e.question for e in entries], [str(c.get("answer", "")) for c in comp]

    def _add_to_buffer(self, prompts, n, ids, lengths, res) -> None:
        for i, p in enumerate(prompts):
            sl = slice(i * n, (i + 1) * n)
            part = {k: v[sl] for k, v in res.items()}
            try:
                self.buffer.add(p, self._to_entries(ids[sl], lengths[sl], part))
            except ConnectionError as err:
                self.buffer_unavailable += 1
                log.debug("replay buffer unavailable (%s): trajectories not stored", err)

    def _log_probes(self) -> None:
        columns = ["step", "subject", "question", "answer", "log_reward_unscaled", "log_contradiction", "log_likelihood"]
        for lg in self.loggers:
            if hasattr(lg, "log_table"):
                lg.log_table(key="generation_probes", columns=columns, data=self.probe_rows[-60:])

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: list[EditRecord], batch_idx: int) -> None:
        n = int(self.task_cfg["n_samples"])
        prompts = [self.prompt_for(r) for r in batch]
        traj = self.sample_fresh(prompts, n, explore=False)
        res = self.exchange(self._request(batch, prompts, n, traj, terminal_only=True, store=False))
        bs = traj.lengths.numel()
        terminal = res["log_r_unscaled"].gather(1, traj.lengths.cpu()[:, None]).squeeze(1)
        self.log("val/contradiction_rate", contradiction_rate(res["log_c"]), batch_size=bs, sync_dist=True)
        self.log("val/avg_log_reward_unscaled", terminal.mean().to(self.device), batch_size=bs, sync_dist=True)
        self.log("val/avg_question_len", traj.lengths.float().mean(), batch_size=bs, sync_dist=True)
        if self.global_rank == 0 and getattr(self, "_last_diversity", None) is not None:
            self.log("val/semantic_diversity", self._last_diversity, batch_size=bs, rank_zero_only=True)

    # ------------------------------------------------------------------ probes after training
    @torch.no_grad()
    def probe(self, records: list[EditRecord], n: int) -> list[tuple[EditRecord, RewardOutput]]:
        """Sample ``n`` questions per record at temperature 1 and score them (rank 0 only)."""
        out = []
        for r in records:
            p = self.prompt_for(r)
            traj = self.sample_fresh([p], n, explore=False)
            res = self.reward_fn([p] * n, [r.edit_fact] * n, [r.original_fact] * n, traj.question_ids.cpu(),
                                 traj.lengths.cpu(), self.global_step, terminal_only=True)
            out.append((r, res))
        return out

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["gfn_state"] = {
            "rng": self.rng.get_state(), "skipped_nonfinite": self.skipped_nonfinite, "buffer_steps": self.buffer_steps,
            "train_steps": self.train_steps, "log_z_ready": self.log_z_ready,
            "buffer": self.buffer.state() if self.buffer is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("gfn_state")
        if state:
            self._restored_rng = state["rng"]
            self.skipped_nonfinite = state["skipped_nonfinite"]
            self.buffer_steps = state["buffer_steps"]
            self.train_steps = state.get("train_steps", 0)
            self.log_z_ready = state.get("log_z_ready", True)

    def on_train_start(self) -> None:
        if getattr(self, "_restored_rng", None) is not None:
            self.rng.set_state(self._restored_rng)
