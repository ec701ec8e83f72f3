"""Evaluate a trained sampler against the untrained sampler and plain prompting of the base model.

    python scripts/evaluate.py --run-dir logs/demo/runs/<time>                 # its last.ckpt, held-out records
    python scripts/evaluate.py --run-dir RUN --ckpt RUN/checkpoints/step_000050.ckpt --k 16 --split val
    python scripts/evaluate.py --run-dir RUN --data ../shared/data/counterfact-val.json --max-records 32   # other edits

For each edit record of the split it samples ``k`` questions at temperature 1 from each variant,
answers and judges them with the run's own reward configuration (the offline judge or the NLI
judge, whichever the run used), and reports per variant:

* ``contradiction_rate``: share of questions whose answer the judge finds contradicting the edit (p > 0.5);
* ``mean_log_reward``: mean unscaled log R (log C + likelihood_weight x log P);
* ``mean_log_contradiction``: mean log C;
* ``semantic_diversity``: mean pairwise cosine distance (all-MiniLM-L6-v2) of a record's questions, averaged;
* ``distinct_2``: distinct word bigrams over all bigrams of a record's questions, averaged;
* ``mean_length``: question tokens;
* ``fluency``: the base model's log-likelihood per token of the question (termination included)
  after the sampler's prompt;
* ``glitch_share``: share of questions with non-text (replacement or control characters, runs of
  3+ symbols other than dots, "words" of 25+ characters). A loose screen, not a classifier.

Variants: ``trained`` (the checkpoint's LoRA weights), ``untrained`` (LoRA at its initial, zero
update: the base model under the sampler's action constraints), ``plain_prompting`` (the base
model asked in plain words, ``model.generate`` at temperature 1, cut at the first ``?``).
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
PLAIN_INSTRUCTION = "Ask one question about {subject}."
METRICS = ("contradiction_rate", "mean_log_reward", "mean_log_contradiction", "semantic_diversity", "distinct_2",
           "mean_length", "fluency", "glitch_share")


def is_glitchy(question: str) -> bool:
    return bool(GLITCH.search(question))


def plain_prompting(model, tokenizer, subject: str, k: int, max_new_tokens: int, generator_seed: int) -> list[str]:
    """The base model asked for a question in plain words (chat template when it has one)."""
    text = PLAIN_INSTRUCTION.format(subject=subject)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    else:
        text = f"{text}\nQuestion:"
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)] * k)
    torch.manual_seed(generator_seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    questions = []
    for row in out[:, ids.size(1):]:
        q = tokenizer.decode(row.tolist(), skip_special_tokens=True).strip().split("\n", 1)[0]
        q = q.split("?", 1)[0].strip()
        questions.append(q + "?")
    return questions


def encode_questions(tokenizer, questions: list[str], term_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Question texts (ending in "?") as (B, T+1) ids with the termination token, and lengths."""
    rows = [tokenizer.encode(" " + q[:-1].strip(), add_special_tokens=False) or [term_id] for q in questions]
    T1 = max(len(r) for r in rows) + 1
    ids = torch.full((len(rows), T1), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        ids[i, len(r)] = term_id
    return ids, torch.tensor([len(r) for r in rows])


def score_variant(task, records, questions_per_record) -> tuple[dict, list, list]:
    """The variant's metrics; per record (subject, edit fact, [(question, answer, log C, log R)]); and per
    record the raw values the target estimate needs: (log C, unscaled log R, lengths, embeddings)."""
    from gflownet.metrics import contradiction_rate, distinct_n, semantic_diversity

    log_c, log_r, fluency, lengths, divs, d2, glitch, examples, raw = [], [], [], [], [], [], [], [], []
    for record, (ids, lens) in zip(records, questions_per_record):
        n = lens.numel()
        prompt = task.prompt_for(record)
        out = task.reward_fn([prompt] * n, [record.edit_fact] * n, [record.original_fact] * n, ids, lens, task.global_step,
                             terminal_only=True)
        emb = task.embedder(out.questions)
        log_c.append(out.log_c)
        log_r.append(out.terminal_unscaled)
        fluency.append(out.log_p / (lens.float() + 1))
        lengths.append(lens.float())
        divs.append(semantic_diversity(emb))
        d2.append(distinct_n(out.questions, 2))
        glitch += [is_glitchy(q) for q in out.questions]
        rows = list(zip(out.questions, out.answers, out.log_c.tolist(), out.terminal_unscaled.tolist()))
        examples.append((record.subject, record.edit_fact, rows))
        raw.append((out.log_c, out.terminal_unscaled, lens.float(), emb))
    log_c, log_r = torch.cat(log_c), torch.cat(log_r)
    return {
        "contradiction_rate": contradiction_rate(log_c), "mean_log_reward": float(log_r.mean()),
        "mean_log_contradiction": float(log_c.nanmean()), "semantic_diversity": sum(divs) / len(divs),
        "distinct_2": sum(d2) / len(d2), "mean_length": float(torch.cat(lengths).mean()),
        "fluency": float(torch.cat(fluency).mean()), "glitch_share": sum(glitch) / len(glitch), "questions": len(glitch),
    }, examples, raw


def target_estimate(raw, log_q, temperature: float) -> dict:
    """What an exact sampler of the reward's target, R(x)^(1/T) / Z, would score, estimated from the
    untrained sampler's own questions by self-normalised importance sampling, per record:
    weights proportional to exp(log R(x) / T - log q(x)), with q the untrained sampler's probability
    of x. Diversity weighs each pair by w_i w_j. ``ess`` (effective sample size per record, at most
    k) says how far to trust it: a target far from the untrained sampler leaves few effective samples."""
    from gflownet.metrics import CONTRADICTION_LOG_THRESHOLD, semantic_diversity

    rate, log_r_mean, logc_mean, div, length, ess = [], [], [], [], [], []
    for (log_c, log_r, lens, emb), lq in zip(raw, log_q):
        w = torch.softmax(log_r.double() / temperature - lq.double(), dim=0)
        div.append(semantic_diversity(emb, weights=w))
        rate.append(float((w * (log_c.double() > CONTRADICTION_LOG_THRESHOLD)).sum()))
        log_r_mean.append(float((w * log_r.double()).sum()))
        logc_mean.append(float((w * log_c.double()).sum()))
        length.append(float((w * lens.double()).sum()))
        ess.append(float(1.0 / (w**2).sum()))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"contradiction_rate": mean(rate), "mean_log_reward": mean(log_r_mean), "mean_log_contradiction": mean(logc_mean),
            "semantic_diversity": mean(div), "mean_length": mean(length), "ess_per_record": mean(ess),
            "temperature": temperature}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a training run's output directory (holds .hydra/config.yaml)")
    parser.add_argument("--ckpt", help="checkpoint to evaluate (default: RUN/checkpoints/last.ckpt)")
    parser.add_argument("--k", type=int, default=8, help="questions per record and variant")
    parser.add_argument("--split", choices=["val", "train", "all"], default="val", help="records of the run's own data")
    parser.add_argument("--data", help="evaluate on this edit file instead (converted .jsonl, or a raw zsRE/CounterFact "
                                       "file, converted on the fly); with --max-records, its first N records")
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=["trained", "untrained", "plain_prompting"])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", help="directory for evaluation.json and evaluation.md (default: beside the checkpoint)")
    args = parser.parse_args()

    import hydra
    from omegaconf import OmegaConf

    from gflownet.metrics import Embedder
    from gflownet.modeling import resolve
    from gflownet.runner import build_task, quiet_libraries

    quiet_libraries()
    run = Path(args.run_dir)
    cfg_path = run / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        sys.exit(f"{cfg_path} not found: --run-dir must be a training run's output directory")
    cfg = OmegaConf.load(cfg_path)
    ckpt = Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
    if "trained" in args.variants and not ckpt.is_file():
        sys.exit(f"checkpoint {ckpt} not found: pass --ckpt or drop 'trained' from --variants")
    if args.data:
        from gflownet.data import convert, load_records

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
        sys.exit(f"no records to evaluate in {args.data or cfg.data.path} ({split}): choose another --split or --data")

    task = build_task(cfg)
    task.eval()
    task.reward_fn = task._build_reward()
    task.embedder = Embedder(resolve("packaged:all-minilm-l6-v2", cfg.paths.models_dir)[1])
    results, examples, log_q, target = {}, {}, [], None
    term = task.space.termination_id
    for variant in args.variants:
        t0 = time.perf_counter()
        if variant == "trained":
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            missing = task.load_state_dict(state["state_dict"], strict=False)
            if missing.unexpected_keys:
                sys.exit(f"checkpoint {ckpt} does not fit this run's model: unexpected {missing.unexpected_keys[:3]}")
        task.rng = torch.Generator().manual_seed(args.seed)  # every variant draws from the same seed
        per_record = []
        for record in records:
            if variant == "plain_prompting":
                with task.sampler.disable_adapter():
                    qs = plain_prompting(task.sampler, task.tokenizer, record.subject, args.k, task.space.max_len + 8,
                                         args.seed + len(per_record))
                per_record.append(encode_questions(task.tokenizer, qs, term))
            else:  # untrained: the adapters off, i.e. the LoRA at its initial zero update
                with task.sampler.disable_adapter() if variant == "untrained" else nullcontext():
                    traj = task.sample_fresh([task.prompt_for(record)], args.k, explore=False)
                per_record.append((traj.question_ids.cpu(), traj.lengths.cpu()))
                if variant == "untrained":  # log q(x): the probability with which it drew each question (temperature 1)
                    lp = traj.log_pf.sum(1) + traj.log_pterm.gather(1, traj.lengths[:, None]).squeeze(1)
                    log_q.append(lp.cpu())
        results[variant], examples[variant], raw = score_variant(task, records, per_record)
        if variant == "untrained":  # the target at the end of training: the schedule's final temperature
            target = target_estimate(raw, log_q, float(task.reward_fn.temperature_cfg["end"]))
        results[variant]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{variant}: " + ", ".join(f"{m} {results[variant][m]:.3f}" for m in METRICS), flush=True)
    out_dir = Path(args.out) if args.out else ckpt.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"run_dir": str(run), "checkpoint": str(ckpt), "split": split, "records": len(records), "k": args.k,
            "judge": cfg.reward.judge._target_, "seed": args.seed}
    (out_dir / "evaluation.json").write_text(json.dumps({"meta": meta, "results": results, "target_estimate": target,
                                                         "examples": examples}, indent=2))
    lines = [f"Evaluation of `{ckpt}` on {len(records)} {split} records, {args.k} questions each "
             f"(judge `{meta['judge'].rsplit('.', 1)[-1]}`).", "",
             "| variant | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for variant, res in results.items():
        lines.append(f"| {variant} | " + " | ".join(f"{res[m]:.3f}" for m in METRICS) + " |")
    if target is not None:
        lines.append("| target, estimated | " + " | ".join(f"{target[m]:.3f}" if m in target else "" for m in METRICS) + " |")
        lines += ["", f"The last row estimates what an exact sampler of this reward's target (R^(1/T), T = {target['temperature']:g}) "
                  "would score, by importance-weighting the untrained sampler's questions; effective sample size "
                  f"{target['ess_per_record']:.1f} of {args.k} per record."]
    (out_dir / "evaluation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'evaluation.json'} and {out_dir / 'evaluation.md'}")


if __name__ == "__main__":
    main()
