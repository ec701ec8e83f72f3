"""Pieces of the core module that the end-to-end runs cannot isolate."""

import pytest
import torch

from gflownet.core.policy import LogZHead
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


def test_scored_log_probs_are_the_sampling_policys_with_the_default_lora_dropout(compose_cfg):
    """The default model config ships LoRA dropout 0.05; the loss's log-probabilities (train mode, as
    gfn_loss computes them) must still be those the sampler drew with."""
    from gflownet.runner import build_module

    from tests.function_task_example import CORE

    cfg = compose_cfg([o for o in CORE if not o.startswith("model=")])  # the default model config
    assert cfg.model.lora.dropout == 0.05  # as shipped
    module = build_module(cfg)
    records = [{"topic": "Mars"}]
    prompts = module.prompts_for(records)
    ids, mask = module.encode(prompts, 4)
    with torch.no_grad():
        for lora_b in (p for n, p in module.sampler.named_parameters() if "lora_B" in n):
            lora_b.normal_(0, 0.02)  # a trained-looking adapter, so that its dropout would matter
    module.rng.manual_seed(0)
    traj = module.sample(prompts, 4, encoded=(ids, mask))
    log_pf, log_pterm = module.score_trajectories(ids, mask, traj.sample_ids, traj.lengths)
    assert module.sampler.training
    torch.testing.assert_close(log_pf, traj.log_pf, atol=5e-5, rtol=0)
    torch.testing.assert_close(log_pterm, traj.log_pterm, atol=5e-5, rtol=0)


def test_semantic_diversity_is_per_prompt_and_never_negative():
    from gflownet.core.metrics import semantic_diversity, semantic_diversity_per_prompt

    same = torch.tensor([[0.3, 0.4, 0.5]] * 4) * torch.tensor([[1.0], [2.0], [3.0], [7.0]])
    assert semantic_diversity(same) == 0.0  # identical directions: exactly 0, not -1e-8
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # two prompts, each with two orthogonal samples: 1.0 per prompt, whatever the batch holds
    emb = torch.stack([a, b, a, b])
    assert semantic_diversity_per_prompt(emb, ["p", "p", "q", "q"]) == 1.0
    # pooled over prompts, the same samples would read 4/6: per prompt, it does not depend on batch size
    assert abs(semantic_diversity(emb) - 4 / 6) < 1e-6
    assert semantic_diversity_per_prompt(emb[:2], ["p", "p"]) == 1.0
    assert semantic_diversity_per_prompt(emb[:1], ["p"]) == 0.0


def test_log_z_gradients_are_clipped_apart_from_the_samplers(compose_cfg, tmp_path):
    """A real Lightning step on the toy task with trainer.gradient_clip_val=1.0 and log Z's gradient
    inflated 10^4-fold: the sampler's gradient is clipped by its own norm only (left whole when it is
    under 1), log Z's to norm 1. (Lightning's joint clipping scaled the sampler's by ~10^-4.)"""
    import pytorch_lightning as pl

    import hydra

    from gflownet.runner import build_module

    cfg = compose_cfg(["task=toy", "logger=csv", "callbacks=none", "trainer.max_steps=1", "trainer.gradient_clip_val=1.0",
                       "gfn.use_buffer_prob=0.0"])
    module = build_module(cfg)
    seen = {}

    class Inflate(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            for p in pl_module.log_z_head.parameters():
                p.grad.mul_(1e4)
            grads = [p.grad for p in pl_module.sampler.parameters() if p.grad is not None]
            seen["sampler_before"] = [g.clone() for g in grads]
            seen["sampler_norm"] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["sampler_after"] = [p.grad.clone() for p in pl_module.sampler.parameters() if p.grad is not None]
            seen["log_z_norm"] = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in pl_module.log_z_head.parameters()])))

    trainer = pl.Trainer(accelerator="cpu", max_steps=1, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, callbacks=[Inflate()], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    scale = min(1.0, 1.0 / (seen["sampler_norm"] + 1e-6))
    for before, after in zip(seen["sampler_before"], seen["sampler_after"]):
        torch.testing.assert_close(after, before * scale)
    assert seen["log_z_norm"] == pytest.approx(1.0, rel=1e-3)
    assert {"grad_norm/sampler", "grad_norm/log_z"} <= set(trainer.logged_metrics)


def test_progress_line_shows_the_last_fresh_log_reward_through_replay_steps(caplog):
    """A progress line after a replay-only step reports the last fresh mean log R, not "n/a"."""
    import logging
    from types import SimpleNamespace

    from gflownet.core.callbacks import ProgressLog

    cb = ProgressLog(every_n_steps=1)
    trainer = SimpleNamespace(global_step=0, global_rank=0, max_steps=3, callback_metrics={"train/loss": torch.tensor(2.0)})
    module = SimpleNamespace()
    cb.on_train_start(trainer, module)
    caplog.set_level(logging.INFO, logger="gflownet.progress")
    for step, metrics in enumerate([{"train/fresh/avg_log_reward_unscaled": -31.5}, {"train/replay/avg_log_reward_unscaled": -5.0}], 1):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, {"loss": torch.tensor(2.0), "by_source": metrics}, None, step)
    lines = [r.getMessage() for r in caplog.records if r.name == "gflownet.progress"]
    assert len(lines) == 2 and all("mean log R (fresh) -31.50" in line for line in lines), lines
    assert all(", about " in line and line.endswith(" to go") for line in lines)  # steps 1 and 2 of 3: time left

    quiet = ProgressLog(every_n_steps=1, gfn=False)  # reward-model training: no fresh samples to report
    quiet.on_train_start(trainer, module)
    trainer.global_step = 3
    quiet.on_train_batch_end(trainer, module, {"loss": torch.tensor(2.0)}, None, 3)
    last = [r.getMessage() for r in caplog.records if r.name == "gflownet.progress"][-1]
    assert last.startswith("step 3/3 | loss 2.00 | ") and "mean log R" not in last and "to go" not in last, last


def test_atomic_checkpoint_io_leaves_remote_urls_to_fsspec(tmp_path, monkeypatch):
    """A URL (here fsspec's in-memory filesystem) is saved by Lightning's fsspec path, not written
    as a local file under a mangled name such as ./memory:/..."""
    import fsspec

    from gflownet.core.checkpointing import AtomicCheckpointIO

    monkeypatch.chdir(tmp_path)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, "memory://ckpts/step_000001.ckpt")
    assert fsspec.filesystem("memory").exists("/ckpts/step_000001.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_distinct_items_drops_near_duplicates_by_spelling_and_by_meaning():
    from gflownet.core.metrics import distinct_items

    texts = ["Where is the Eiffel Tower?", "where is the eiffel tower", "Who built the Eiffel Tower?",
             "In which city does the Eiffel Tower stand?"]
    assert distinct_items(texts) == 3  # the second is the first re-spelt
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.99, 0.05]])  # the fourth means the first
    assert distinct_items(texts, emb) == 2
    assert distinct_items([]) == 0


def test_outside_a_trainer_the_module_scores_as_at_the_step_it_is_set_to(compose_cfg):
    """scripts/evaluate.py scores a checkpoint as at its own step (``at_step``): the reward is called with
    that step (a hybrid reward's phase) and the reward temperature is the schedule's there. (Before:
    step 0 always, so a hybrid run was evaluated with its phase-0 reward and a mid-run checkpoint's KL
    and log Z with the final temperature.)"""
    from gflownet.core.exact import terminal_mask
    from gflownet.runner import build_module

    module = build_module(compose_cfg(["task=toy", "logger=none", "gfn.reward_temperature.start=1.0",
                                       "gfn.reward_temperature.end=0.5", "gfn.reward_temperature.horizon=100"]))
    module.build_reward()
    seen, inner = [], module.reward
    module.reward = lambda **kw: (seen.append(kw["step"]), inner(**kw))[1]
    assert module.step == 0 and module.reward_temperature() == pytest.approx(1.0)
    module.at_step(50)
    assert module.step == 50 and module.reward_temperature() == pytest.approx(0.75)
    ids, lengths = module.task.problem.batch_of_all()
    module.compute_rewards(["<s>"] * 2, ids[:2], lengths[:2], terminal_mask(lengths[:2], ids.size(1)), {})
    assert seen == [50]
    with pytest.raises(ValueError, match="step"):
        module.at_step(-1)
