"""Evaluate a trained sampler against the untrained sampler and decoding baselines of the base model.

    python scripts/evaluate.py --run-dir logs/demo/runs/<time>                 # its last.ckpt, held-out records
    python scripts/evaluate.py --run-dir RUN --ckpt RUN/checkpoints/step_000050.ckpt --k 16 --split val
    python scripts/evaluate.py --run-dir RUN --data ../shared/data/counterfact-val.json --max-records 32   # other edits

It works for every task through the module's public methods (``rollout``-style ``sample``,
``compute_rewards``, the task's ``metrics``). For each record of the split it samples ``k`` samples at
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
* ``kl_estimate``, ``log_z_estimate`` (the ``trained`` and ``untrained`` samplers, whose probability
  of each sample is known): per record, ``log Ẑ = log mean exp(log R/T - log P_F)`` over the k samples
  and the plug-in ``KL(sampler || R^(1/T)/Z) ≈ mean(log P_F - log R/T) + log Ẑ`` (gflownet/core/exact.py;
  few samples bias both low), T the reward temperature at the checkpoint's step; ``log_z_learned``: the
  trained log Z head, to compare with ``log_z_estimate``;
* the task's own metrics (prompt inversion: ``best_log_reward``, ``mean_log_prior``, ``mean_log_p_target``).

``evaluation.md`` ends with the three best distinct samples per record of the first variant.

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
Every variant is scored with the reward the checkpoint was trained against at its step: a hybrid
reward's phase and the reward temperature at the checkpoint's ``global_step`` (without a checkpoint:
at ``trainer.max_steps``); ``meta.step`` and ``meta.reward_temperature`` say which.
Writes ``evaluation.json`` (metrics, every sample with its reward components: ``example_columns`` names
them) and ``evaluation.md`` beside the checkpoint (or to ``--out``).

**Leak evaluation** (contradiction task, ``--edit-methods none,in_context,rome,lora_ft``): every
variant's questions are sampled once and answered by the answerer under each edit method in turn
(``configs/answerer/edit``; weight edits carry every edit of the evaluated data, saved under
``edits/`` and reused). Under an edited answerer ``contradiction_rate`` is the **leak rate** (the share
of questions whose edited answer still contradicts the edit) and ``distinct_contradictions`` the
**distinct leaks** per record (contradicting questions left after removing near-duplicates by edit
distance >= 0.85 or embedding cosine >= 0.9). ``--probes FILE`` (default: ``--data`` when it is a
CounterFact file) adds the ``benchmark_probes`` variant: the record's CounterFact paraphrase prompt,
asked as the question.

Judge-free, under every edit method (the task's ``evaluation_metrics``;
``gflownet/tasks/contradiction/leaks.py``): ``edit_took``, the share of edits whose own prompt the
answerer completes with the new object and not the old one; ``edit_readable``, the share whose
subject's name does not hold the original object (elsewhere no leak is read: an answer naming "BMW"
about the BMW 326 may name the car); ``verified_leak_rate``, the share of questions that name the
subject and no spelling of the original object and whose greedy answer names the original object
and not the new one; ``verified_leak_rate_took``, the same over the edits that took and can be read
only; ``edits_with_verified_leak``, the
share of edits with at least one; ``verified_leaks_per_edit``, distinct verified leaks per edit (edit
distance 0.85 or cosine 0.9); ``unique_verified_leaks``, greedy clusters of them at MiniLM cosine 0.7.
A leak only counts where the edit took: ``..._took`` is each count's mean over the edits that took (and can be read) alone
(``edits_with_verified_leak_took``, ``unique_verified_leaks_took``), the figures the leak table shows.
With CounterFact probes, each answerer's efficacy, paraphrase and neighbourhood scores on the evaluated
edits (``edit_quality`` in the JSON, a line above each method's table).
The same counts over each edit's first 1, 2, 4, ..., 32 questions are in the JSON (``_at_<N>``; the
tables show N = 16) and plotted per variant in ``leak_curves.png``, linked from ``evaluation.md``.
``--took-only`` (one edit method) edits first and samples only the records whose edit took and can be
read: the counts that mean something at a fraction of the cost on a large held-out set (the weight
edit still carries every evaluated edit; edit quality is over all of them; ``meta.took_only`` says how
many were kept).

    python scripts/evaluate.py --run-dir RUN --data path/to/counterfact-val.json --max-records 20 --k 16 \
        --edit-methods none,in_context,rome,lora_ft
"""

from __future__ import annotations

import argparse
import json
import math
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

from gflownet.core.metrics import is_glitchy  # noqa: E402

METRICS = ("contradiction_rate", "distinct_contradictions", "mean_log_likelihood", "max_log_likelihood",
           "mean_penalized_log_likelihood", "mean_log_reward",
           "best_log_reward", "mean_log_prior", "mean_log_p_target", "kl_estimate", "log_z_estimate", "log_z_learned",
           "mean_log_contradiction", "mean_leak_margin", "mean_names_subject", "edit_took", "edit_readable", "verified_leak_rate", "verified_leak_rate_took", "edits_with_verified_leak",
           "verified_leaks_per_edit", "unique_verified_leaks", "edits_with_verified_leak_at_16", "unique_verified_leaks_at_16",
           "edits_with_verified_leak_took", "unique_verified_leaks_took", "edits_with_verified_leak_took_at_16",
           "unique_verified_leaks_took_at_16", "semantic_diversity", "subject_diversity", "names_subject_share", "distinct_2", "mean_length", "fluency", "glitch_share")
NOT_METRICS = {"samples", "seconds", "temperature", "ess_per_record"}  # bookkeeping, not shown as metrics
EDIT_METHODS = ("none", "in_context", "rome", "lora_ft")


def shown_metrics(results: dict) -> list[str]:
    """The metrics to print and tabulate: those of ``METRICS`` (in that order) that any variant has,
    then every other number a variant reports (a new task's own metrics, in name order), so that no
    metric a task returns is dropped from the printout or the table."""
    have = {m for r in results.values() for m, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    have -= NOT_METRICS
    have = {m for m in have if budget_of(m) in (None, 16)}  # the other budgets: plotted (leak_curves.png)
    return [m for m in METRICS if m in have] + sorted(have - set(METRICS))


BUDGET = re.compile(r"_at_(\d+)$")  # a count over each edit's first N questions (leak_curves.png plots every N)


def budget_of(metric: str) -> int | None:
    """N of a count over each edit's first N questions (``..._at_<N>``), or None."""
    found = BUDGET.search(metric)
    return int(found.group(1)) if found else None


def plot_leak_curves(payload: dict, k: int, path: Path) -> bool:
    """Unique verified leaks per edit and the share of edits with one against the questions asked per
    edit (the first N of the k), one line per variant, a row per edit method: over the edits that took
    (``..._took``), or over all edits for an evaluation without those counts. False when no variant has
    the counts (a task without verified leaks)."""
    rows = []
    for method, results in payload["results"].items():
        for variant, res in results.items():
            took = "_took" if "unique_verified_leaks_took" in res else ""
            unique_name, share_name = f"unique_verified_leaks{took}", f"edits_with_verified_leak{took}"
            points = sorted(budget_of(m) for m in res if budget_of(m) is not None and m.startswith(unique_name + "_at_"))
            if unique_name in res and points:
                xs = points + [k]
                unique = [res[f"{unique_name}_at_{x}"] for x in points] + [res[unique_name]]
                share = [res.get(f"{share_name}_at_{x}", math.nan) for x in points] + [res[share_name]]
                rows.append((method, variant + ("" if took else " (all edits)"), xs, unique, share))
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    methods = list(dict.fromkeys(r[0] for r in rows))
    fig, axes = plt.subplots(len(methods), 2, figsize=(10, 3.6 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        for _, variant, xs, unique, share in (r for r in rows if r[0] == method):
            axes[i][0].plot(xs, unique, marker="o", label=variant)
            axes[i][1].plot(xs, share, marker="o", label=variant)
        for j, title in enumerate(("unique verified leaks per edit that took", "share of the edits that took with a verified leak")):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axes[i][j].set_xlabel("questions per edit")
            axes[i][j].set_title(f"{title} ({method})" if method else title)
            axes[i][j].grid(alpha=0.3)
        axes[i][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
BASELINES = {  # model.generate settings of the decoding baselines
    "plain_prompting": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "greedy": {"do_sample": False},
    "beam": {"do_sample": False, "num_beams": 4},
    "nucleus": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.95},
    "temperature": {"do_sample": True, "top_k": 0, "top_p": 1.0},
}


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


def continuation_ids(tokenizer, prompt: str, text: str) -> list[int]:
    """The tokens of ``text`` as written after ``prompt``: the tokens of ``prompt + sep + text`` after
    the prompt's own, with ``sep`` a space where the prompt ends without whitespace (a sampler after
    "Question:" starts with " What") and nothing where it ends in whitespace (a chat prompt's
    "assistant\n" is followed by "What"). Where the tokenizer merges across the boundary, the text
    alone (with ``sep``) is encoded instead."""
    sep = "" if not prompt or prompt[-1].isspace() else " "
    head = tokenizer.encode(prompt, add_special_tokens=False)
    full = tokenizer.encode(prompt + sep + text, add_special_tokens=False)
    if full[: len(head)] == head:
        return full[len(head):]
    return tokenizer.encode(sep + text, add_special_tokens=False)


def encode_samples(tokenizer, texts: list[str], term_id: int, termination: str, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample texts (ending in the termination text) as (B, T+1) ids with the termination token, and
    lengths, tokenised as they would be written after the sampler's ``prompt`` (``continuation_ids``):
    the sequences the sampler's own samples are, so that baselines and probes are scored on the tokens
    a model would write. (Encoding ``" " + text`` after a chat prompt scored other tokens: 12.7 nats
    lower log P_base per question on SmolLM2.)"""
    rows = [continuation_ids(tokenizer, prompt, t[: -len(termination)].strip()) or [term_id] for t in texts]
    T1 = max(len(r) for r in rows) + 1
    ids = torch.full((len(rows), T1), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        ids[i, len(r)] = term_id
    return ids, torch.tensor([len(r) for r in rows])


def score_variant(module, records, samples_per_record, progress=None) -> tuple[dict, list, list, list[str]]:
    """The variant's metrics; per record (description, [(sample, texts..., components..., log R)]); per
    record the raw values the target estimate needs: (log C or None, unscaled log R, lengths, embeddings);
    and the names of the example rows' columns."""
    from gflownet.core.losses import terminal_states
    from gflownet.core.metrics import distinct_items, distinct_n, semantic_diversity
    from gflownet.core.protocols import Rollout, task_hook

    task_metrics, log_r_all, fluency, lengths_all, divs, d2, glitch, examples, raw = [], [], [], [], [], [], [], [], []
    log_c_all, distinct, extra, components, columns = [], [], [], {}, []
    evaluation_metrics = task_hook(module.task, "evaluation_metrics")  # a task's judge-free checks
    hit = task_hook(module.task, "hit")  # (name, component, threshold): what counts as a hit (contradiction: log C > log 0.5)
    for record, (ids, lens) in zip(records, samples_per_record):
        n = lens.numel()
        prompts = module.prompts_for([record]) * n
        scored = terminal_states(lens)
        out = module.compute_rewards(prompts, ids, lens, scored, module.context([record], n))
        samples = module.texts(ids, lens)
        rollout = Rollout(prompts, ids, lens, out.log_r, scored, samples, out.components, out.texts)
        terminal = rollout.terminal_log_r
        task_metrics.append(module.task.metrics(rollout))
        emb = module.embedder(samples)
        log_r_all.append(terminal)
        if "log_likelihood" in out.components:
            fluency.append(out.components["log_likelihood"] / (lens.float() + 1))
        log_c = out.components.get(hit[1]) if hit else None
        if log_c is not None:
            log_c_all.append(log_c)
            hits = [i for i in range(n) if float(log_c[i]) > hit[2]]
            distinct.append(distinct_items([samples[i] for i in hits], emb[hits] if hits else None))
        lengths_all.append(lens.float())
        divs.append(semantic_diversity(emb))
        d2.append(distinct_n(samples, 2))
        glitch += [is_glitchy(q) for q in samples]
        for name, values in out.components.items():
            components.setdefault(name, []).append(values.double())
        if evaluation_metrics is not None:
            extra.append(evaluation_metrics(module, record, samples, emb))
        rows = [[samples[i], *[out.texts[k][i] for k in sorted(out.texts)],
                 *[float(out.components[k][i]) for k in sorted(out.components)], float(terminal[i])] for i in range(n)]
        examples.append((module.task.describe(record), rows))
        columns = ["sample", *sorted(out.texts), *sorted(out.components), "log_r"]
        raw.append((log_c, terminal, lens.float(), emb))
        if progress is not None:
            progress.step()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    result = {name: mean([m[name] for m in task_metrics]) for name in task_metrics[0]}
    result.update({
        "mean_log_reward": float(torch.cat(log_r_all).mean()), "semantic_diversity": mean(divs), "distinct_2": mean(d2),
        "mean_length": float(torch.cat(lengths_all).mean()), "glitch_share": mean(glitch), "samples": len(glitch),
    })
    if log_c_all:
        result[f"distinct_{hit[0]}s"] = mean(distinct)
    if fluency:
        result["fluency"] = float(torch.cat(fluency).mean())
    for name, values in components.items():  # each reward component's mean (mean_log_contradiction, mean_leak_margin)
        if f"mean_{name}" not in result:  # a task's own metric of that name (next sentence: mean_log_likelihood) stays
            result[f"mean_{name}"] = float(torch.cat(values).nanmean())
    result.update(mean_over_records(extra))
    if extra:  # each record's own judge-free figures, so that a reader can check every mean (and which edits took)
        result["per_record"] = {description: values for (description, _), values in zip(examples, extra)}
    return result, examples, raw, columns


def mean_over_records(per_record: list[dict]) -> dict[str, float]:
    """Each metric's mean over the records that have it; NaN (not applicable to a record) is left out."""
    out = {}
    for name in dict.fromkeys(k for e in per_record for k in e):
        values = [e[name] for e in per_record if name in e and not math.isnan(e[name])]
        out[name] = sum(values) / len(values) if values else math.nan
    return out


def target_estimate(raw, log_q, temperature: float, hit: tuple | None = None) -> dict:
    """What an exact sampler of the reward's target, R(x)^(1/T) / Z, would score, estimated from the
    untrained sampler's own questions by self-normalised importance sampling, per record:
    weights proportional to exp(log R(x) / T - log q(x)), with q the untrained sampler's probability
    of x. Diversity weighs each pair by w_i w_j. ``ess`` (effective sample size per record, at most
    k) says how far to trust it: a target far from the untrained sampler leaves few effective samples."""
    from gflownet.core.metrics import semantic_diversity

    rate, log_r_mean, logc_mean, div, length, ess = [], [], [], [], [], []
    for (log_c, log_r, lens, emb), lq in zip(raw, log_q):
        w = torch.softmax(log_r.double() / temperature - lq.double(), dim=0)
        div.append(semantic_diversity(emb, weights=w))
        if log_c is not None and hit is not None:
            rate.append(float((w * (log_c.double() > hit[2])).sum()))
            logc_mean.append(float((w * log_c.double()).sum()))
        log_r_mean.append(float((w * log_r.double()).sum()))
        length.append(float((w * lens.double()).sum()))
        ess.append(float(1.0 / (w**2).sum()))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {"mean_log_reward": mean(log_r_mean), "semantic_diversity": mean(div), "mean_length": mean(length),
           "ess_per_record": mean(ess), "temperature": temperature}
    if rate:
        out.update({f"{hit[0]}_rate": mean(rate), f"mean_{hit[1]}": mean(logc_mean)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a training run's output directory (holds .hydra/config.yaml)")
    parser.add_argument("--ckpt", help="checkpoint to evaluate (default: RUN/checkpoints/last.ckpt)")
    parser.add_argument("--k", type=int, default=8, help="samples per record and variant")
    parser.add_argument("--split", choices=["val", "train", "all"], default="val", help="records of the run's own data")
    parser.add_argument("--data", help="evaluate on this file's records instead (a task with records_from; the contradiction "
                                       "task: a converted .jsonl, or a raw zsRE/CounterFact file, converted on the fly); "
                                       "with --max-records, its first N records")
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=None,
                        help="default: trained untrained plain_prompting (contradiction), trained untrained greedy beam "
                             "nucleus temperature (other tasks)")
    parser.add_argument("--baseline-temperature", type=float, default=1.0, help="the 'temperature' baseline's temperature")
    parser.add_argument("--edit-methods", help="leak evaluation: comma-separated answerer edits to answer every variant's "
                                               f"questions under ({', '.join(EDIT_METHODS)}); default: the run's own answerer")
    parser.add_argument("--probes", help="CounterFact JSON whose paraphrase prompts make the 'benchmark_probes' variant "
                                         "(default: --data when it is a CounterFact file)")
    parser.add_argument("--edits-dir", default=str(ROOT / "edits"), help="where weight edit sets are saved and reused")
    parser.add_argument("--edit-evaluated-only", action="store_true",
                        help="weight edits (rome, lora_ft) carry only the evaluated records' edits, not every edit of the "
                             "run's data (ROME on a subset: about 50 s per edit on a CPU)")
    parser.add_argument("--took-only", action="store_true",
                        help="leak evaluation with one --edit-methods: sample only the records whose edit took under "
                             "that edited answerer and can be read (where a leak counts); edit quality is still "
                             "measured on every record")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", help="directory for evaluation.json and evaluation.md (default: beside the checkpoint)")
    args = parser.parse_args()

    import hydra
    from omegaconf import OmegaConf

    from gflownet.core import exact
    from gflownet.core.losses import trajectory_log_prob
    from gflownet.core.progress import Progress
    from gflownet.runner import apply_checkpoint, build_module, load_run_config, quiet_libraries

    quiet_libraries()
    run = Path(args.run_dir)
    try:
        cfg = load_run_config(run)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(str(err))
    from gflownet.core.protocols import task_hook

    try:
        task = hydra.utils.instantiate(cfg.task)  # its optional hooks say which variants and checks apply
    except Exception as err:  # noqa: BLE001 - a run's task that no longer builds
        sys.exit(f"the run's task ({cfg.task.get('_target_')}) does not build here: {err}")
    variants = list(args.variants or task_hook(task, "evaluation_variants")
                    or ["trained", "untrained", "greedy", "beam", "nucleus", "temperature"])
    methods = [m.strip() for m in args.edit_methods.split(",")] if args.edit_methods else []
    if set(methods) - set(EDIT_METHODS):
        sys.exit(f"unknown --edit-methods {sorted(set(methods) - set(EDIT_METHODS))}: choose from {', '.join(EDIT_METHODS)}")
    if methods and not task_hook(task, "answerer_edits"):
        sys.exit(f"--edit-methods is for a task whose reward has an answerer to edit (the contradiction task), not "
                 f"{task.name}")
    is_probes = task_hook(task, "probes_file")
    probes_file = args.probes or (args.data if args.data and is_probes and is_probes(Path(args.data)) else None)
    if methods and probes_file and args.variants is None:
        variants.append("benchmark_probes")
    unknown = set(variants) - {"trained", "untrained", "benchmark_probes", *BASELINES}
    if unknown:
        sys.exit(f"unknown --variants {sorted(unknown)}: choose from trained, untrained, benchmark_probes, {', '.join(BASELINES)}")
    if "benchmark_probes" in variants and task_hook(task, "benchmark_probes") is None:
        sys.exit(f"the benchmark_probes variant is for a task with a benchmark's own probes (the contradiction task), not "
                 f"{task.name}")
    if "benchmark_probes" in variants and not probes_file:
        sys.exit("the benchmark_probes variant needs CounterFact paraphrase prompts: pass --probes FILE (a CounterFact JSON)")
    ckpt = Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
    if "trained" in variants and not ckpt.is_file():
        sys.exit(f"checkpoint {ckpt} not found: pass --ckpt or drop 'trained' from --variants")
    if args.data:
        records_from = task_hook(task, "records_from")
        if records_from is None:
            sys.exit(f"--data: the {task.name} task reads no records from a file (its task has no records_from); "
                     "evaluate its own data with --split")
        source = Path(args.data)
        if not source.is_file():
            sys.exit(f"--data {source}: no such file")
        records = records_from(source)
        split = source.name
        records = records[: args.max_records] if args.max_records else records
        edit_source = RecordsSource(records, [])  # weight edits carry the evaluated edits
    else:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        records = {"val": datamodule.val_records, "train": datamodule.train_records,
                   "all": datamodule.train_records + datamodule.val_records}[args.split]
        split = args.split
        records = records[: args.max_records] if args.max_records else records
        # as in training: every edit of the run's data, or of its own answerer.edit.data where it names another set
        edit_source = run_edit_source(cfg) or RecordsSource(datamodule.train_records, datamodule.val_records)
        if args.edit_evaluated_only:
            edit_source = RecordsSource(records, [])
    if not records:
        sys.exit(f"no records to evaluate in {args.data or cfg.data.get('path')} ({split}): choose another --split or --data")

    if args.took_only and len(methods) != 1:
        sys.exit("--took-only picks the records whose edit took under one edited answerer: pass exactly one "
                 "--edit-methods")
    if args.took_only and task_hook(task, "counted_edits") is None:
        sys.exit(f"--took-only is for a task whose edits can take (the contradiction task), not {task.name}")

    module = build_module(cfg)
    module.eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt.is_file() else None
    # every variant is scored with the reward the checkpoint was trained against: its step's reward phase and
    # temperature (without a checkpoint: the end of training's)
    step = int(state.get("global_step", 0)) if state is not None else int(cfg.trainer.get("max_steps", 0) or 0)
    module.at_step(max(step, 0))
    temperature = module.reward_temperature()
    print(f"scoring as at training step {module.step}: reward temperature {temperature:g}", flush=True)
    module.build_reward()
    if module.embedder is None:
        from gflownet.core.metrics import Embedder
        from gflownet.core.modeling import resolve

        module.embedder = Embedder(resolve("packaged:all-minilm-l6-v2", cfg.paths.models_dir)[1])
    termination, term = module.task.limits.termination_text, module.space.termination_id
    run_edit = OmegaConf.to_container(cfg.answerer.edit, resolve=False) if cfg.get("answerer", {}).get("edit") else None
    quality_of = task_hook(task, "edit_quality")
    took_quality, took_only = None, None
    if args.took_only:  # edit first, keep the records where a leak counts; quality is over every record
        use_edit(module, methods[0], edit_source, Path(args.edits_dir), run_edit)
        if probes_file and quality_of:
            took_quality = quality_of(module, methods[0], Path(probes_file), records)
        counted = task_hook(task, "counted_edits")(module, records)
        took_only = {"records": len(records), "kept": int(sum(counted))}
        print(f"--took-only: {took_only['kept']} of {len(records)} edits took under {methods[0]} and can be read", flush=True)
        records = [r for r, keep in zip(records, counted) if keep]
        if not records:
            sys.exit(f"--took-only: no edit of {split} took under {methods[0]}: nothing to evaluate")
    try:
        probes = task_hook(task, "benchmark_probes")(Path(probes_file), records) if "benchmark_probes" in variants else None
    except ValueError as err:
        sys.exit(f"--probes: {err}")
    samples, log_q, seconds, sampler_log_q, learned_log_z = {}, [], {}, {}, []
    for variant in variants:  # sample once per variant; every edit method answers the same questions
        t0 = time.perf_counter()
        if variant == "trained":
            try:
                apply_checkpoint(module, state, ckpt)
            except ValueError as err:
                sys.exit(str(err))
        module.rng = torch.Generator().manual_seed(args.seed)  # every variant draws from the same seed
        per_record = []
        progress = Progress(f"sampling {variant}", len(records))
        for i, record in enumerate(records):
            sampler_prompt = module.prompts_for([record])[0]  # what every variant's samples are scored after
            if variant == "benchmark_probes":
                per_record.append(encode_samples(module.tokenizer, [p + termination for p in probes[i]], term, termination,
                                                 sampler_prompt))
            elif variant in BASELINES:
                settings = dict(BASELINES[variant])
                if variant == "temperature":
                    settings["temperature"] = args.baseline_temperature
                prompt = sampler_prompt
                if variant == "plain_prompting":
                    plain = getattr(module.task, "baseline_prompt", None)
                    prompt = plain(record, module.tokenizer) if plain else prompt
                with module.sampler.disable_adapter() if hasattr(module.sampler, "disable_adapter") else nullcontext():
                    texts = decode_baseline(module.sampler, module.tokenizer, prompt, args.k, module.space.max_len + 8,
                                            args.seed + i, settings, termination)
                per_record.append(encode_samples(module.tokenizer, texts, term, termination, sampler_prompt))
            else:  # untrained: the adapters off, i.e. the LoRA at its initial zero update
                with module.sampler.disable_adapter() if variant == "untrained" else nullcontext():
                    traj = module.sample([sampler_prompt], args.k, explore=False)
                per_record.append((traj.sample_ids.cpu(), traj.lengths.cpu()))
                lp = trajectory_log_prob(traj.log_pf, traj.log_pterm, traj.lengths).cpu()
                sampler_log_q.setdefault(variant, []).append(lp)  # the probability with which it drew each sample (temperature 1)
                if variant == "untrained":
                    log_q.append(lp)
                if variant == "trained":
                    learned = exact.learned_log_z(module, sampler_prompt)
                    if learned is not None:
                        learned_log_z.append(learned)
            progress.step()
        samples[variant] = per_record
        seconds[variant] = time.perf_counter() - t0

    def score_all(label: str) -> tuple[dict, dict, dict | None, list[str]]:
        """Each variant's metrics and examples, the target estimate, and the examples' column names."""
        results, examples, target, columns = {}, {}, None, []
        for variant in variants:
            t0 = time.perf_counter()
            results[variant], examples[variant], raw, columns = score_variant(
                module, records, samples[variant], Progress(f"scoring {label}{variant}", len(records)))
            if variant == "untrained" and log_q:  # the target at the checkpoint's step (its reward temperature)
                target = target_estimate(raw, log_q, temperature, task_hook(module.task, "hit"))
            if variant in sampler_log_q:  # a sampler whose probabilities are known: distances to the target
                per = [exact.importance_metrics(lq, r[1], temperature)
                       for lq, r in zip(sampler_log_q[variant], raw)]
                for key in ("kl_estimate", "log_z_estimate"):
                    results[variant][key] = sum(p[key] for p in per) / len(per)
                if variant == "trained" and learned_log_z:
                    results[variant]["log_z_learned"] = sum(learned_log_z) / len(learned_log_z)
            results[variant]["seconds"] = round(seconds[variant] + time.perf_counter() - t0, 1)
            print(f"{label}{variant}: " + ", ".join(f"{m} {results[variant][m]:.3f}"
                                                   for m in shown_metrics({variant: results[variant]})),
                  flush=True)
        return results, examples, target, columns

    judge = cfg.reward.get("judge", {}).get("_target_") if "judge" in cfg.reward else None
    meta = {"run_dir": str(run), "checkpoint": str(ckpt), "task": module.task.name, "split": split, "records": len(records),
            "k": args.k, "judge": judge, "seed": args.seed, "step": module.step, "reward_temperature": temperature,
            "smoothing": state.get("smoothing") if state is not None else None, "took_only": took_only}
    what = f" (judge `{judge.rsplit('.', 1)[-1]}`)" if judge else ""
    head = (f"Evaluation of `{ckpt}` on {len(records)} {split} records of the {module.task.name} task, {args.k} samples "
            f"each{what}, scored as at training step {module.step} (reward temperature {temperature:g}).")
    if meta["smoothing"]:
        head += (f" The checkpoint is smoothed (`scripts/smooth.py`, from `{meta['smoothing']['source']}`): its "
                 "log Z head is the GFlowNet run's, so `log_z_learned` does not describe the trained sampler.")
    out_dir = Path(args.out) if args.out else ckpt.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if not methods:
        results, examples, target, columns = score_all("")
        payload = {"meta": meta, "results": results, "target_estimate": target, "examples": examples,
                   "example_columns": columns}
        lines = [head, ""] + table(results, target, args.k) + [""] + best_samples(examples, variants[0])
    else:
        payload = {"meta": dict(meta, edit_methods=methods), "results": {}, "examples": {}}
        lines = [head, "", "Leak evaluation: under an edited answerer, contradiction_rate is the leak rate and "
                 "distinct_contradictions the distinct leaks per record.", ""]
        if took_only:
            lines += [f"Only the {took_only['kept']} of {took_only['records']} edits that took under {methods[0]} and can "
                      "be read were sampled (`--took-only`); edit quality is over all of them.", ""]
        for method in methods:
            if took_only:  # the one method, edited already, its quality measured on every record
                quality = took_quality
            else:
                use_edit(module, method, edit_source, Path(args.edits_dir), run_edit)
                quality = quality_of(module, method, Path(probes_file), records) if probes_file and quality_of else None
            if quality is not None:
                payload.setdefault("edit_quality", {})[method] = quality
                print(f"[{method}] edit quality on these {quality['edits']} edits: efficacy {quality['efficacy']:.1f}, "
                      f"paraphrase {quality['paraphrase']:.1f}, neighbourhood {quality['neighbourhood']:.1f}", flush=True)
            results, examples, target, columns = score_all(f"[{method}] ")
            payload["results"][method], payload["examples"][method] = results, examples
            if target is not None:  # the table shows it under the first method; the JSON keeps each
                payload.setdefault("target_estimate", {})[method] = target
            payload.setdefault("example_columns", {})[method] = columns
            lines += [f"### answerer edit: {method}", ""]
            if quality is not None:
                lines += [f"Edit quality of this answerer on these {quality['edits']} edits (CounterFact's scores, %): "
                          f"efficacy {quality['efficacy']:.1f}, paraphrase {quality['paraphrase']:.1f}, "
                          f"neighbourhood {quality['neighbourhood']:.1f}.", ""]
            lines += table(results, target if method == methods[0] else None, args.k) + [""]
    if plot_leak_curves(payload if methods else {"results": {"": payload["results"]}}, args.k, out_dir / "leak_curves.png"):
        lines += ["", "Verified leaks against the questions asked per edit (the first N of each edit's k; the tables show "
                  "N = 16 and k): ![leak curves](leak_curves.png)"]
    (out_dir / "evaluation.json").write_text(json.dumps(payload, indent=2))
    (out_dir / "evaluation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'evaluation.json'} and {out_dir / 'evaluation.md'}")


def table(results: dict, target: dict | None, k: int) -> list[str]:
    shown = shown_metrics(results)
    lines = ["| variant | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for variant, res in results.items():
        lines.append(f"| {variant} | " + " | ".join(f"{res[m]:.3f}" if m in res else "" for m in shown) + " |")
    if target is not None:
        lines.append("| target, estimated | " + " | ".join(f"{target[m]:.3f}" if m in target else "" for m in shown) + " |")
        lines += ["", f"The last row estimates what an exact sampler of this reward's target (R^(1/T), T = {target['temperature']:g}) "
                  "would score, by importance-weighting the untrained sampler's samples; effective sample size "
                  f"{target['ess_per_record']:.1f} of {k} per record."]
    return lines


def best_samples(examples: dict, variant: str, n: int = 3) -> list[str]:
    """The ``n`` highest-reward distinct samples of each record for one variant, as markdown."""
    lines = [f"Best samples of `{variant}` per record (log R):", ""]
    for record, rows in examples[variant]:
        best: dict[str, float] = {}
        for row in rows:
            text = " ".join(str(row[0]).split())
            best[text] = max(float(row[-1]), best.get(text, float("-inf")))
        top = sorted(best.items(), key=lambda kv: -kv[1])[:n]
        lines.append(f"- {record}: " + "; ".join(f"`{t}` ({v:.2f})" for t, v in top))
    return lines


class RecordsSource:
    """The edit records a weight edit applies (``answerer.edit.data`` accepts anything with ``load()``)."""

    def __init__(self, train: list, val: list):
        self.train, self.val = list(train), list(val)

    def load(self) -> tuple[list, list]:
        return self.train, self.val


def run_edit_source(cfg) -> RecordsSource | None:
    """The records a run's weight edit applied when its ``answerer.edit.data`` is a data set of its own
    rather than the run's data (``${data}``): e.g. a sampler trained on some of the edits an answerer
    carries. None where the edit applies the run's own data."""
    import hydra
    from omegaconf import OmegaConf

    edit = cfg.get("answerer", {}).get("edit")
    if edit is None or not isinstance(OmegaConf.to_container(edit, resolve=False).get("data"), dict):
        return None
    train, val = hydra.utils.instantiate(edit.data).load()
    return RecordsSource(list(train), list(val))


def use_edit(module, method: str, source: RecordsSource, edits_dir: Path, run_edit: dict | None = None) -> None:
    """Rebuild the module's reward with the answerer edited by ``method`` (configs/answerer/edit/METHOD.yaml).
    The run's own method keeps the run's layer, settings and statistics (``run_edit``, its
    ``answerer.edit``), so that the evaluation's edited answerer is the one the sampler trained against."""
    import functools

    from omegaconf import OmegaConf

    edit = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "answerer" / "edit" / f"{method}.yaml"), resolve=False)
    if run_edit and run_edit.get("method") == method:
        edit.update({k: run_edit[k] for k in ("layer", "settings", "stats", "template", "answer_format") if k in run_edit})
        if method == "lora_ft" and "answer_format" not in run_edit:  # a run from before answer_format: bare-prompt edits
            edit["answer_format"] = False
        print(f"answerer edit {method}: the run's settings "
              f"{json.dumps({k: edit.get(k) for k in ('layer', 'settings', 'answer_format')})}",
              flush=True)
    if method in ("rome", "lora_ft"):
        edit.update(data=source, cache_dir=str(edits_dir))
    factory = module.reward_factory
    module.reward_factory = functools.partial(factory.func, *factory.args, **{**factory.keywords, "edit": edit})
    module.reward = None
    module.build_reward()


if __name__ == "__main__":
    main()
