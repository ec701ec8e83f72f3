"""One GFlowNet training step, two designs, one table with ratios.

    python bench/bench_step.py                       # SmolLM2-135M and tiny GPT-2, batch 8/16/32, max length 25
    python bench/bench_step.py --models tiny-gpt2 --batches 8 --repeats 2

* sample-then-score (this project): sample without gradients with a KV cache
  (``gflownet.core.sampling.sample``), then one batched teacher-forced pass with gradients
  (``gflownet.core.sampling.score``), SubTB loss, backward.
* rollout-with-grad (the original's design): the same KV-cache generation loop run with
  autograd on, keeping every step's graph, then SubTB loss and backward on the collected
  log-probabilities.

Both sample the same questions (same generator seed, LoRA dropout 0), so the work is equal.
The loss uses fixed synthetic per-prefix rewards: this measures the core loop, not the reward.

Times: for each (model, batch) one process loads the model once, warms both designs up, then
alternates them (ours, theirs, ours, theirs, ...) for ``--repeats`` rounds and reports medians:
this machine's speed drifts by 20-40% between minutes, and alternating puts both designs under
the same drift. Memory: each (model, design, batch) runs one step in a fresh process, whose
peak RSS is reported (and its growth over the RSS after loading the model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {"smollm2-135m": "packaged:smollm2-135m-instruct", "tiny-gpt2": "packaged:tiny-gpt2"}
DESIGNS = ("sample_then_score", "rollout_with_grad")
PROMPT_FORMAT = os.environ.get("BENCH_PROMPT_FORMAT", "edit")  # the contradiction task's prompt (subject: the original's)


def rollout_with_grad(model, prompt_ids, prompt_mask, space, pad_id, generator):
    """The original design: the generation loop on the autograd graph. Returns what ``sample`` does."""
    import torch

    from gflownet.core.sampling import Trajectories, draw, position_ids, prompt_pass

    B, T = prompt_ids.size(0), space.max_len
    tokens = torch.full((B, T + 1), pad_id, dtype=torch.long)
    log_pf, log_pterm = [], []
    lengths = torch.full((B,), T, dtype=torch.long)
    active = torch.ones(B, dtype=torch.bool)
    attn = prompt_mask.long()
    # the same shared prompt pass and token draw as ours, so the table compares the designs only
    logits, cache, _ = prompt_pass(model, prompt_ids, attn)
    next_pos = position_ids(attn)[:, -1] + 1
    for t in range(T + 1):
        lp = space.log_probs(logits[:, -1:, :], torch.tensor([t]))[:, 0]
        with torch.no_grad():
            tok = draw(lp.detach(), generator)
        is_term = tok == space.termination_id
        log_pterm.append(torch.where(active, lp[:, space.termination_id], torch.zeros(())))
        if t < T:
            log_pf.append(torch.where(active & ~is_term, lp.gather(1, tok[:, None]).squeeze(1), torch.zeros(())))
        tokens[:, t] = torch.where(active, tok, tokens[:, t])
        lengths = torch.where(active & is_term, torch.full_like(lengths, t), lengths)
        active = active & ~is_term
        if not active.any():
            break
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype)], dim=1)
        out = model(input_ids=tokens[:, t : t + 1], attention_mask=attn, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        logits, cache = out.logits, out.past_key_values
        next_pos = next_pos + 1
    Tm = int(lengths.max())
    pf = torch.stack(log_pf, 1)[:, :Tm] if log_pf else torch.zeros(B, 0)
    if pf.size(1) < Tm:
        pf = torch.cat([pf, torch.zeros(B, Tm - pf.size(1))], 1)
    return Trajectories(tokens[:, : Tm + 1], lengths, pf, torch.stack(log_pterm, 1)[:, : Tm + 1])


def run_one(model_key: str, designs: list[str], batch: int, max_len: int, repeats: int) -> dict:
    import torch

    from gflownet.core.losses import subtb_loss
    from gflownet.core.modeling import load_sampler, load_tokenizer
    from gflownet.runner import quiet_libraries
    from gflownet.core.sampling import (ActionSpace, encode_prompts, forbidden_token_mask, sample, score,
                                        termination_token_id)
    from gflownet.tasks.contradiction.data import EditRecord
    from gflownet.tasks.contradiction.task import ContradictionTask

    quiet_libraries()
    torch.manual_seed(0)
    ref = MODELS[model_key]
    tok = load_tokenizer(ref)
    model = load_sampler(ref, {"r": 16, "alpha": 32, "dropout": 0.0})
    term = termination_token_id(tok, "?")
    vocab = model.get_output_embeddings().weight.size(0)
    space = ActionSpace(term, forbidden_token_mask(tok, vocab, ["eos", "newline", "termination"], term), 5, max_len)
    style = "chat" if tok.chat_template else "plain"
    record = EditRecord("The Eiffel Tower", "The Eiffel Tower is located in", "Paris", "Rome",
                        "The Eiffel Tower is located in Paris", "The Eiffel Tower is located in Rome")
    prompt = ContradictionTask(prompt_style=style, prompt_format=PROMPT_FORMAT).prompt(record, tok)
    ids, mask = encode_prompts(tok, [prompt] * batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step(design: str, seed: int) -> tuple[float, int]:
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        if design == "sample_then_score":
            traj = sample(model, ids, mask, space, tok.pad_token_id, generator=gen)
            model.train()
            log_pf, log_pterm = score(model, ids, mask, traj.sample_ids, traj.lengths, space)
        else:
            model.train()
            traj = rollout_with_grad(model, ids, mask, space, tok.pad_token_id, gen)
            log_pf, log_pterm = traj.log_pf, traj.log_pterm
        T1 = log_pterm.size(1)
        steps = torch.arange(T1)[None]
        scored = (steps >= space.min_len) & (steps <= traj.lengths[:, None])
        log_r = torch.randn(batch, T1, generator=torch.Generator().manual_seed(1))
        loss = subtb_loss(log_pf, log_pterm, log_r, scored, traj.lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, int(traj.lengths.sum())

    for design in designs:
        step(design, 100)  # warm-up
    times: dict[str, list[float]] = {d: [] for d in designs}
    tokens = 0
    for i in range(repeats):
        for design in designs:  # alternate, so drift in machine speed hits every design alike
            seconds, tokens = step(design, 101 + i)
            times[design].append(seconds)
    return {
        "model": model_key, "designs": designs, "batch": batch, "max_len": max_len, "tokens": tokens,
        "seconds": {d: statistics.median(t) for d, t in times.items()}, "all_seconds": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loaded_rss_mb": rss_loaded / 1024, "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--max-len", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.one:
        model_key, designs, batch = args.one.split(",")
        print(json.dumps(run_one(model_key, designs.split("+"), int(batch), args.max_len, args.repeats)))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def child(model_key: str, designs: list[str], batch: int, repeats: int) -> dict:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", f"{model_key},{'+'.join(designs)},{batch}", "--max-len", str(args.max_len),
             "--repeats", str(repeats)], capture_output=True, text=True, env=env,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{model_key} {designs} batch {batch} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    rows = []
    for model_key in args.models:
        for batch in args.batches:
            timed = child(model_key, list(DESIGNS), batch, args.repeats)
            memory = {d: child(model_key, [d], batch, 1) for d in DESIGNS}
            rows.append({"model": model_key, "batch": batch, "timed": timed, "memory": memory})
            t = timed["seconds"]
            print(f"  {model_key} batch {batch}: " + ", ".join(f"{d} {t[d]:.2f} s (all {timed['all_seconds'][d]})" for d in DESIGNS)
                  + ", peak RSS " + ", ".join(f"{d} {memory[d]['peak_rss_mb']:.0f} MB" for d in DESIGNS), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))

    ours, theirs = DESIGNS
    print(f"\nOne training step (sample, score, SubTB loss, backward), max length {args.max_len}; time = median of "
          f"{args.repeats} alternating rounds after a warm-up, {rows[0]['timed']['threads']} torch threads; "
          "memory = peak RSS of a one-step process\n")
    print("| model | batch | tokens | sample-then-score s | rollout-with-grad s | time ratio (rollout / ours) "
          "| ours peak RSS MB (+ over loaded) | rollout peak RSS MB (+ over loaded) | memory ratio (+ over loaded) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, m = r["timed"]["seconds"], r["memory"]
        d_ours = m[ours]["peak_rss_mb"] - m[ours]["loaded_rss_mb"]
        d_theirs = m[theirs]["peak_rss_mb"] - m[theirs]["loaded_rss_mb"]
        print(f"| {r['model']} | {r['batch']} | {r['timed']['tokens']} | {t[ours]:.2f} | {t[theirs]:.2f} | "
              f"{t[theirs] / t[ours]:.2f}x | {m[ours]['peak_rss_mb']:.0f} (+{d_ours:.0f}) | "
              f"{m[theirs]['peak_rss_mb']:.0f} (+{d_theirs:.0f}) | {d_theirs / max(d_ours, 1):.2f}x |")


if __name__ == "__main__":
    main()
