"""Evaluate a trained sampler against the untrained sampler and decoding baselines of the base model.

    python scripts/evaluate.py --run-dir logs/demo/runs/<time>                 # its last.ckpt, held-out records
    python scripts/evaluate.py --run-dir RUN --ckpt RUN/checkpoints/step_000050.ckpt --k 16 --split val
    python scripts/evaluate.py --run-dir RUN --data ../shared/data/counterfact-val.json --max-records 32   # other edits

It works for every task through the module's public methods (``rollout``-style ``sample``,
``score_rewards``, the task's ``metrics``). For each record of the split it samples ``k`` samples at
temperature 1 from each variant, rewards them with the run's own reward configuration (for the
contradiction task: its answerer and judge), and reports per variant:

* ``contradiction_rate`` (contradiction task): share of questions whose answer the judge finds contradicting the edit (p > 0.5);
* the task's own metrics (next-sentence task: ``mean_log_likelihood``, ``max_log_likelihood``);
* ``mean_log_reward``: mean unscaled log R;
* ``mean_log_contradiction``: mean log C (contradiction task);
* ``semantic_diversity``: mean pairwise cosine distance (all-MiniLM-L6-v2) of a record's questions, averaged;
* ``distinct_2``: distinct word bigrams over all bigrams of a record's questions, averaged;
* ``mean_length``: sample tokens;
* ``fluency``: the base model's log-likelihood per token of the sample (termination included)
  after the sampler's prompt (where the reward has a likelihood term);
* ``glitch_share``: share of questions with non-text (replacement or control characters, runs of
  3+ symbols other than dots, "words" of 25+ characters). A loose screen, not a classifier.

Variants: ``trained`` (the checkpoint's LoRA weights), ``untrained`` (LoRA at its initial, zero
update: the base model under the sampler's action constraints), and decoding baselines of the base
model with ``model.generate``, cut at the first termination text: ``plain_prompting`` (asked in
plain words where the task has a ``baseline_prompt``, at temperature 1), ``greedy``, ``beam``
(4 beams, the k best), ``nucleus`` (p = 0.95) and ``temperature`` (``--baseline-temperature``,
default 1.0) from the sampler's own prompt.
With the untrained variant it also estimates what an exact sampler of the run's target R^(1/T)/Z
would score ("target, estimated"), by importance-weighting the untrained sampler's questions
(``target_estimate``): before training, it says whether a reward's knobs ask for the contradiction
rate and diversity one wants, and after training, how far the sampler got.
Writes ``evaluation.json`` and ``evaluation.md`` beside the checkpoint (or to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))  # the run configs resolve paths from it, as train.py sets it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

GLITCH = re.compile(r"[\ufffd\x00-\x08\x0b-\x1f\x7f]|[^\w\s.]{3,}|\S{25,}")  # "..." is text, "@#%" is not
METRICS = ("contradiction_rate", "mean_log_likelihood", "max_log_likelihood", "mean_log_reward", "mean_log_contradiction",
           "semantic_diversity", "distinct_2", "mean_length", "fluency", "glitch_share")
BASELINES = {  # model.generate settings of the decoding baselines
    "plain_prompting": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "greedy": {"do_sample": False},
    "beam": {"do_sample": False, "num_beams": 4},
    "nucleus": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.95},
    "temperature": {"do_sample": True, "top_k": 0, "top_p": 1.0},
}


def is_glitchy(text: str) -> bool:
    return bool(GLITCH.search(text))


def decode_baseline(model, tokenizer, prompt: str, k: int, max_new_tokens: int, seed: int, settings: dict,
                    termination: str) -> list[str]:
    """k samples of the base model (``model.generate``) after ``prompt``, each cut at its first line
    and first termination text (which is appended). Beam search returns its k best beams."""
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    settings = dict(settings)
    if settings.get("num_beams"):
        settings["num_beams"] = max(settings["num_beams"], k)
        settings["num_return_sequences"] = k
        batch = ids
    elif settings.get("do_sample"):
        settings["num_return_sequences"] = k
        batch = ids
    else:
        batch = ids  # greedy: one answer, repeated k times
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, **settings)
    texts = []
    for row in out[:, ids.size(1):]:
        text = tokenizer.decode(row.tolist(), skip_special_tokens=True).strip().split("\n", 1)[0]
        texts.append(text.split(termination, 1)[0].strip() + termination)
    return (texts * k)[:k]


def encode_samples(tokenizer, texts: list[str], term_id: int, termination: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample texts (ending in the termination text) as (B, T+1) ids with the termination token, and lengths."""
    rows = [tokenizer.encode(" " + t[: -len(termination)].strip(), add_special_tokens=False) or [term_id] for t in texts]
    T1 = max(len(r) for r in rows) + 1
    ids = torch.full((len(rows), T1), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        ids[i, len(r)] = term_id
    return ids, torch.tensor([len(r) for r in rows])


def score_variant(module, records, samples_per_record) -> tuple[dict, list, list]:
    """The variant's metrics; per record (description, [(sample, texts..., components..., log R)]); and per
    record the raw values the target estimate needs: (log C or None, unscaled log R, lengths, embeddings)."""
    from gflownet.core.losses import terminal_states
    from gflownet.core.metrics import distinct_n, semantic_diversity
    from gflownet.core.protocols import Rollout

    task_metrics, log_r_all, fluency, lengths_all, divs, d2, glitch, examples, raw = [], [], [], [], [], [], [], [], []
    log_c_all = []
    for record, (ids, lens) in zip(records, samples_per_record):
        n = lens.numel()
        prompts = module.prompts_for([record]) * n
        scored = terminal_states(lens)
        out = module.score_rewards(prompts, ids, lens, scored, module.context([record], n))
        samples = module.texts(ids, lens)
        rollout = Rollout(prompts, ids, lens, out.log_r, scored, samples, out.components, out.texts)
        terminal = rollout.terminal_log_r
        task_metrics.append(module.task.metrics(rollout))
        emb = module.embedder(samples)
        log_r_all.append(terminal)
        if "log_likelihood" in out.components:
            fluency.append(out.components["log_likelihood"] / (lens.float() + 1))
        log_c = out.components.get("log_contradiction")
        if log_c is not None:
            log_c_all.append(log_c)
        lengths_all.append(lens.float())
        divs.append(semantic_diversity(emb))
        d2.append(distinct_n(samples, 2))
        glitch += [is_glitchy(q) for q in samples]
        rows = [[samples[i], *[out.texts[k][i] for k in sorted(out.texts)],
                 *[float(out.components[k][i]) for k in sorted(out.components)], float(terminal[i])] for i in range(n)]
        examples.append((module.task.describe(record), rows))
        raw.append((log_c, terminal, lens.float(), emb))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    result = {name: mean([m[name] for m in task_metrics]) for name in task_metrics[0]}
    result.update({
        "mean_log_reward": float(torch.cat(log_r_all).mean()), "semantic_diversity": mean(divs), "distinct_2": mean(d2),
        "mean_length": float(torch.cat(lengths_all).mean()), "glitch_share": mean(glitch), "samples": len(glitch),
    })
    if log_c_all:
        result["mean_log_contradiction"] = float(torch.cat(log_c_all).nanmean())
    if fluency:
        result["fluency"] = float(torch.cat(fluency).mean())
    return result, examples, raw


def target_estimate(raw, log_q, temperature: float) -> dict:
    """What an exact sampler of the reward's target, R(x)^(1/T) / Z, would score, estimated from the
    untrained sampler's own questions by self-normalised importance sampling, per record:
    weights proportional to exp(log R(x) / T - log q(x)), with q the untrained sampler's probability
    of x. Diversity weighs each pair by w_i w_j. ``ess`` (effective sample size per record, at most
    k) says how far to trust it: a target far from the untrained sampler leaves few effective samples."""
    from gflownet.core.metrics import semantic_diversity
    from gflownet.tasks.contradiction.task import CONTRADICTION_LOG_THRESHOLD

    rate, log_r_mean, logc_mean, div, length, ess = [], [], [], [], [], []
    for (log_c, log_r, lens, emb), lq in zip(raw, log_q):
        w = torch.softmax(log_r.double() / temperature - lq.double(), dim=0)
        div.append(semantic_diversity(emb, weights=w))
        if log_c is not None:
            rate.append(float((w * (log_c.double() > CONTRADICTION_LOG_THRESHOLD)).sum()))
            logc_mean.append(float((w * log_c.double()).sum()))
        log_r_mean.append(float((w * log_r.double()).sum()))
        length.append(float((w * lens.double()).sum()))
        ess.append(float(1.0 / (w**2).sum()))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {"mean_log_reward": mean(log_r_mean), "semantic_diversity": mean(div), "mean_length": mean(length),
           "ess_per_record": mean(ess), "temperature": temperature}
    if rate:
        out.update(contradiction_rate=mean(rate), mean_log_contradiction=mean(logc_mean))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a training run's output directory (holds .hydra/config.yaml)")
    parser.add_argument("--ckpt", help="checkpoint to evaluate (default: RUN/checkpoints/last.ckpt)")
    parser.add_argument("--k", type=int, default=8, help="samples per record and variant")
    parser.add_argument("--split", choices=["val", "train", "all"], default="val", help="records of the run's own data")
    parser.add_argument("--data", help="contradiction task: evaluate on this edit file instead (converted .jsonl, or a raw "
                                       "zsRE/CounterFact file, converted on the fly); with --max-records, its first N records")
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=None,
                        help="default: trained untrained plain_prompting (contradiction), trained untrained greedy beam "
                             "nucleus temperature (other tasks)")
    parser.add_argument("--baseline-temperature", type=float, default=1.0, help="the 'temperature' baseline's temperature")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", help="directory for evaluation.json and evaluation.md (default: beside the checkpoint)")
    args = parser.parse_args()

    import hydra
    from omegaconf import OmegaConf

    from gflownet.core.losses import trajectory_log_prob
    from gflownet.runner import build_module, quiet_libraries

    quiet_libraries()
    run = Path(args.run_dir)
    cfg_path = run / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        sys.exit(f"{cfg_path} not found: --run-dir must be a training run's output directory")
    cfg = OmegaConf.load(cfg_path)
    if "module" not in cfg:
        sys.exit(f"{cfg_path} predates the task-independent core (no 'module' block): evaluate it with the version "
                 "of this project that trained it")
    variants = args.variants or (["trained", "untrained", "plain_prompting"] if cfg.task._target_.endswith("ContradictionTask")
                                 else ["trained", "untrained", "greedy", "beam", "nucleus", "temperature"])
    unknown = set(variants) - {"trained", "untrained", *BASELINES}
    if unknown:
        sys.exit(f"unknown --variants {sorted(unknown)}: choose from trained, untrained, {', '.join(BASELINES)}")
    ckpt = Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
    if "trained" in variants and not ckpt.is_file():
        sys.exit(f"checkpoint {ckpt} not found: pass --ckpt or drop 'trained' from --variants")
    if args.data:
        from gflownet.tasks.contradiction.data import convert, load_records

        source = Path(args.data)
        if not source.is_file():
            sys.exit(f"--data {source}: no such file")
        records = load_records(source) if source.suffix == ".jsonl" else convert(source)[0]
        split = source.name
    else:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        records = {"val": datamodule.val_records, "train": datamodule.train_records,
                   "all": datamodule.train_records + datamodule.val_records}[args.split]
        split = args.split
    records = records[: args.max_records] if args.max_records else records
    if not records:
        sys.exit(f"no records to evaluate in {args.data or cfg.data.get('path')} ({split}): choose another --split or --data")

    module = build_module(cfg)
    module.eval()
    module.build_reward()
    if module.embedder is None:
        from gflownet.core.metrics import Embedder
        from gflownet.core.modeling import resolve

        module.embedder = Embedder(resolve("packaged:all-minilm-l6-v2", cfg.paths.models_dir)[1])
    termination, term = module.task.limits.termination_text, module.space.termination_id
    results, examples, log_q, target = {}, {}, [], None
    for variant in variants:
        t0 = time.perf_counter()
        if variant == "trained":
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            missing = module.load_state_dict(state["state_dict"], strict=False)
            if missing.unexpected_keys:
                sys.exit(f"checkpoint {ckpt} does not fit this run's model: unexpected {missing.unexpected_keys[:3]}")
        module.rng = torch.Generator().manual_seed(args.seed)  # every variant draws from the same seed
        per_record = []
        for i, record in enumerate(records):
            if variant in BASELINES:
                settings = dict(BASELINES[variant])
                if variant == "temperature":
                    settings["temperature"] = args.baseline_temperature
                prompt = module.prompts_for([record])[0]
                if variant == "plain_prompting":
                    plain = getattr(module.task, "baseline_prompt", None)
                    prompt = plain(record, module.tokenizer) if plain else prompt
                with module.sampler.disable_adapter() if hasattr(module.sampler, "disable_adapter") else nullcontext():
                    texts = decode_baseline(module.sampler, module.tokenizer, prompt, args.k, module.space.max_len + 8,
                                            args.seed + i, settings, termination)
                per_record.append(encode_samples(module.tokenizer, texts, term, termination))
            else:  # untrained: the adapters off, i.e. the LoRA at its initial zero update
                with module.sampler.disable_adapter() if variant == "untrained" else nullcontext():
                    traj = module.sample(module.prompts_for([record]), args.k, explore=False)
                per_record.append((traj.question_ids.cpu(), traj.lengths.cpu()))
                if variant == "untrained":  # log q(x): the probability with which it drew each sample (temperature 1)
                    log_q.append(trajectory_log_prob(traj.log_pf, traj.log_pterm, traj.lengths).cpu())
        results[variant], examples[variant], raw = score_variant(module, records, per_record)
        if variant == "untrained":  # the target at the end of training: the schedule's final temperature
            target = target_estimate(raw, log_q, float(cfg.gfn.reward_temperature.end))
        results[variant]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{variant}: " + ", ".join(f"{m} {results[variant][m]:.3f}" for m in METRICS if m in results[variant]), flush=True)
    shown = [m for m in METRICS if any(m in r for r in results.values())]
    out_dir = Path(args.out) if args.out else ckpt.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = cfg.reward.get("judge", {}).get("_target_") if "judge" in cfg.reward else None
    meta = {"run_dir": str(run), "checkpoint": str(ckpt), "task": module.task.name, "split": split, "records": len(records),
            "k": args.k, "judge": judge, "seed": args.seed}
    (out_dir / "evaluation.json").write_text(json.dumps({"meta": meta, "results": results, "target_estimate": target,
                                                         "examples": examples}, indent=2))
    what = f" (judge `{judge.rsplit('.', 1)[-1]}`)" if judge else ""
    lines = [f"Evaluation of `{ckpt}` on {len(records)} {split} records of the {module.task.name} task, {args.k} samples "
             f"each{what}.", "", "| variant | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for variant, res in results.items():
        lines.append(f"| {variant} | " + " | ".join(f"{res[m]:.3f}" if m in res else "" for m in shown) + " |")
    if target is not None:
        lines.append("| target, estimated | " + " | ".join(f"{target[m]:.3f}" if m in target else "" for m in shown) + " |")
        lines += ["", f"The last row estimates what an exact sampler of this reward's target (R^(1/T), T = {target['temperature']:g}) "
                  "would score, by importance-weighting the untrained sampler's samples; effective sample size "
                  f"{target['ess_per_record']:.1f} of {args.k} per record."]
    (out_dir / "evaluation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'evaluation.json'} and {out_dir / 'evaluation.md'}")


if __name__ == "__main__":
    main()
