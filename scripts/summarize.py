"""Summarise a sweep's runs from their own logs: Markdown and LaTeX tables and a PNG of the curves.

    python scripts/summarize.py logs/sweeps/<sweep>/runs.tsv                # what run_experiments.sh writes
    python scripts/summarize.py logs/train/multiruns/<time>                 # a Hydra multirun directory
    python scripts/summarize.py logs/demo/runs/<time> logs/demo/runs/<time2>   # single runs, side by side
    python scripts/summarize.py RUNS --out experiment_summary               # -> .md, .tex, .png

Per run it reads the CSV metrics the run logged (``logger=csv`` or ``logger=many``) and reports:

* ``log R``: mean of ``train/fresh/avg_log_reward_unscaled`` over the last ``--last`` training steps that sampled fresh (replayed trajectories left out);
* ``contradiction``: the last ``val/contradiction_rate`` (held-out records; "n/a" with a note
  when the run never validated);
* ``diversity``: the last ``val/semantic_diversity`` (else the training mean over the last steps);
* ``length``: the last ``val/avg_length`` (else the training mean);
* ``steps``: the number of training steps logged.

A run that failed is listed with its exit status; a run without metrics is listed as such.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

HYPER = ("likelihood_weight", "pf_temp_high", "use_buffer_prob")
HYPER_KEYS = {"reward.likelihood_weight": "likelihood_weight", "gfn.pf_temp_high": "pf_temp_high",
              "gfn.use_buffer_prob": "use_buffer_prob"}


@dataclass
class Run:
    name: str
    run_dir: Path
    params: dict[str, str]
    status: str = "ok"
    exit_code: int = 0
    log: str = ""
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    final: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as (step, value) pairs, over its CSV logger versions in order."""
    files = sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    curves: dict[str, list[tuple[int, float]]] = {}
    for f in files:  # a resumed run writes a new version: later versions continue the curves
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                step = row.get("step")
                if not step:
                    continue
                for k, v in row.items():
                    if k in ("step", "epoch") or v in ("", None):
                        continue
                    curves.setdefault(k, []).append((int(float(step)), float(v)))
    return curves


def tail_mean(points: list[tuple[int, float]], n: int) -> float | None:
    vals = [v for _, v in points[-n:] if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def last(points: list[tuple[int, float]] | None) -> float | None:
    return points[-1][1] if points else None


def finalise(run: Run, last_n: int) -> None:
    c = run.curves
    run.final["steps"] = float(len(c.get("train/loss", [])))
    run.final["log_reward"] = tail_mean(c.get("train/fresh/avg_log_reward_unscaled", []), last_n)
    run.final["contradiction_rate"] = last(c.get("val/contradiction_rate"))
    if c and "val/contradiction_rate" not in c:
        run.notes.append("never validated: no held-out contradiction rate")
    run.final["diversity"] = last(c.get("val/semantic_diversity")) if "val/semantic_diversity" in c else tail_mean(
        c.get("train/fresh/semantic_diversity", []), last_n)
    run.final["question_len"] = last(c.get("val/avg_length")) if "val/avg_length" in c else tail_mean(
        c.get("train/fresh/avg_length", []), last_n)
    if not c and run.status == "ok":
        run.status = "no metrics"


def runs_from_tsv(path: Path) -> list[Run]:
    """The table run_experiments.sh writes: name, the three hyperparameters, status, exit code, run dir, log."""
    runs = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            run_dir = Path(row["run_dir"])
            if not run_dir.is_absolute():
                run_dir = path.parent / run_dir
            runs.append(Run(row["name"], run_dir, {h: row[h] for h in HYPER}, row["status"], int(row["exit_code"]), row.get("log", "")))
    return runs


def overrides_of(run_dir: Path) -> dict[str, str]:
    """The command-line overrides Hydra recorded for a run (hydra.* left out), sweep names shortened."""
    import yaml

    f = run_dir / ".hydra" / "overrides.yaml"
    overrides = (yaml.safe_load(f.read_text()) or []) if f.is_file() else []
    kv = dict(o.split("=", 1) for o in overrides if "=" in o)
    return {HYPER_KEYS.get(k, k): v for k, v in kv.items() if not k.startswith("hydra.")}


def runs_from_multirun(path: Path) -> list[Run]:
    """A Hydra multirun directory: one numbered job directory each."""
    jobs = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [Run(f"job{job.name}", job, overrides_of(job)) for job in jobs]


def fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


COLUMNS = [("log_reward", "log R (last steps)", 2), ("contradiction_rate", "contradiction rate (val)", 2),
           ("diversity", "diversity", 2), ("question_len", "question length", 1), ("steps", "steps", 0)]


def param_names(runs: list[Run]) -> list[str]:
    """The sweep's three hyperparameters, then any other override whose value differs between runs."""
    names = [h for h in HYPER if any(h in r.params for r in runs)]
    others = {k for r in runs for k in r.params} - set(names)
    return names + sorted(k for k in others if len({r.params.get(k) for r in runs}) > 1)


def row_cells(r: Run, params: list[str], failed: str) -> list[str]:
    """One run's table row: name, parameters, status (``failed`` formatted with the exit code), metrics."""
    status = failed.format(r.exit_code) if r.status == "failed" else r.status
    return [r.name, *[r.params.get(p, "") for p in params], status, *[fmt(r.final.get(k), d) for k, _, d in COLUMNS]]


def markdown(runs: list[Run], source: str, last_n: int) -> str:
    params = param_names(runs)
    head = ["run", *params, "status", *[c[1] for c in COLUMNS]]
    lines = ["# Experiment summary\n", f"Runs from `{source}`. log R is the mean unscaled log-reward of the last "
             f"{last_n} training steps; contradiction rate, diversity and length are the last validation on "
             "held-out records.\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        lines.append("| " + " | ".join(row_cells(r, params, "failed (exit {})")) + " |")
    notes = [f"- {r.name}: {n}" for r in runs for n in r.notes] + [f"- {r.name}: log `{r.log}`" for r in runs if r.status == "failed" and r.log]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def latex_escape(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")


def latex(runs: list[Run], last_n: int) -> str:
    params = param_names(runs)
    head = ["run", *params, "status", *[c[1] for c in COLUMNS]]
    rows = []
    for r in runs:
        rows.append(" & ".join(latex_escape(c) for c in row_cells(r, params, "failed ({})")) + r" \\")
    return "\n".join([
        r"\begin{table}[t]", r"\centering", r"\small",
        r"\begin{tabular}{" + "l" * (2 + len(params)) + "r" * len(COLUMNS) + "}", r"\toprule",
        " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule", *rows, r"\bottomrule", r"\end{tabular}",
        r"\caption{Sweep results. log R: mean unscaled log-reward of the last " + str(last_n)
        + r" training steps; contradiction rate, diversity and question length: last validation on held-out records.}",
        r"\label{tab:experiment-summary}", r"\end{table}", "",
    ])


def smooth(points: list[tuple[int, float]], window: int) -> tuple[list[int], list[float]]:
    xs, ys, acc = [], [], []
    for s, v in points:
        acc.append(v)
        acc = acc[-window:]
        xs.append(s)
        ys.append(sum(acc) / len(acc))
    return xs, ys


GENERIC = {"train/fresh/avg_log_reward_unscaled", "train/fresh/avg_length", "train/fresh/semantic_diversity",
           "train/fresh/avg_log_reward_scaled", "val/avg_log_reward_unscaled", "val/avg_length", "val/semantic_diversity"}


def curve_panels(runs: list[Run], window: int) -> list[tuple[str, str, bool]]:
    """Six panels: training log R, held-out log R, diversity (held out where validated, else training),
    training length, and the task's own two first figures (a held-out task metric such as
    val/contradiction_rate, else a reward component's training mean such as train/fresh/avg_log_contradiction)."""
    have = {k for r in runs for k, pts in r.curves.items() if pts}
    diversity = "val/semantic_diversity" if "val/semantic_diversity" in have else "train/fresh/semantic_diversity"
    own = sorted(k for k in have if k.startswith("val/") and k not in GENERIC)
    own += sorted(k for k in have if k.startswith("train/fresh/avg_") and k not in GENERIC)
    panels = [("train/fresh/avg_log_reward_unscaled", f"train log R (moving mean of {window})", True),
              ("val/avg_log_reward_unscaled", "val log R (held out)", False),
              (diversity, "val semantic diversity (held out)" if diversity.startswith("val/")
               else f"train semantic diversity (moving mean of {window})", diversity.startswith("train/")),
              ("train/fresh/avg_length", f"train sample length (moving mean of {window})", True)]
    for key in own[:2]:
        held_out = key.startswith("val/")
        panels.append((key, f"{key} (held out)" if held_out else f"{key} (moving mean of {window})", not held_out))
    return panels


def plot(runs: list[Run], path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(runs, window)
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, (key, title, smoothed) in zip(axes.flat, panels):
        for r in runs:
            pts = r.curves.get(key)
            if not pts:
                continue
            xs, ys = smooth(pts, window) if smoothed else ([s for s, _ in pts], [v for _, v in pts])
            ax.plot(xs, ys, marker="" if smoothed else "o", label=r.name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+",
                    help="runs.tsv from run_experiments.sh, a Hydra multirun directory, or run directories")
    ap.add_argument("--out", default="experiment_summary", help="output path without suffix (.md, .tex and .png are written)")
    ap.add_argument("--last", type=int, default=10, help="training steps averaged for the final log-reward")
    ap.add_argument("--window", type=int, default=10, help="moving-mean window of the training curves")
    ap.add_argument("--names", nargs="+", help="labels for the runs, in order (default: names from the sources)")
    args = ap.parse_args(argv)
    runs: list[Run] = []
    for src in args.runs:
        if src.is_file():
            runs += runs_from_tsv(src)
        elif (src / "csv").is_dir():
            runs.append(Run(str(src), src, overrides_of(src)))
        elif src.is_dir():
            runs += runs_from_multirun(src)
        else:
            ap.error(f"{src} is neither a runs.tsv file, a multirun directory nor a run directory")
    if not runs:
        ap.error(f"no runs found in {args.runs}")
    if args.names:
        if len(args.names) != len(runs):
            ap.error(f"--names gives {len(args.names)} labels for {len(runs)} runs")
        for r, name in zip(runs, args.names):
            r.name = name
    for r in runs:
        r.curves = read_metrics(r.run_dir) if r.run_dir.is_dir() else {}
        finalise(r, args.last)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(runs, ", ".join(map(str, args.runs)), args.last))
    out.with_suffix(".tex").write_text(latex(runs, args.last))
    plot(runs, out.with_suffix(".png"), args.window)
    print(out.with_suffix(".md").read_text())
    print(f"wrote {out}.md, {out}.tex and {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
