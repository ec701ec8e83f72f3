"""Recompute the judge-free leak metrics of an evaluation with today's rules, on the questions it drew.

    python scripts/rescore_leaks.py --run-dir RUN --evaluation RUN/checkpoints/evaluation.json

``scripts/evaluate.py`` stores every sampled question; this script asks the run's own edited
answerer each of them again (greedy, so the same answers) and replaces, for every variant of the
run's edit method, the metrics of the task's ``evaluation_metrics`` (``edit_took``, the verified-leak
counts) in ``evaluation.json``, keeping the old values under ``before_rescoring``. Use it when the
verified-leak rule changes, instead of sampling and scoring everything again.

    python scripts/rescore_leaks.py --run-dir RUN --evaluation EVAL/evaluation.json --subject-only

adds only the figures read from the questions themselves (``names_subject_share`` and
``subject_diversity``, ``leaks.subject_metrics``) to every variant of every edit method, without
asking the answerer: a minute instead of one evaluation's scoring time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_evaluation(path: Path) -> dict:
    if not path.is_file():
        sys.exit(f"--evaluation {path}: no such file (scripts/evaluate.py writes evaluation.json)")
    return json.loads(path.read_text())


def run_records(run_dir: str | Path):
    """A run's config and every record of its data by its task's description of it (how
    evaluation.json names records)."""
    import hydra

    from gflownet.runner import load_run_config, quiet_libraries

    quiet_libraries()
    try:
        cfg = load_run_config(run_dir)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(str(err))
    task = hydra.utils.instantiate(cfg.task)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    return cfg, {task.describe(r): r for r in datamodule.train_records + datamodule.val_records}


def load_run(run_dir: str | Path):
    """A run's edit method, its module with the reward built (the run's own edited answerer), and
    every record of its data by description: what re-asking its questions needs."""
    from gflownet.runner import build_module

    cfg, by_description = run_records(run_dir)
    method = cfg.answerer.edit.method if cfg.get("answerer", {}).get("edit") else "none"
    module = build_module(cfg)
    module.eval()
    module.build_reward()
    return method, module, by_description


def variant_means(per_record: list, by_description: dict, path: Path, embedder, metrics_of) -> tuple[dict[str, float], dict]:
    """``metrics_of(record, questions, embeddings)`` of each record's stored questions, averaged over
    the records (``evaluate.mean_over_records``), and each record's own, by description."""
    from evaluate import mean_over_records

    extra = {}
    for description, rows in per_record:
        if description not in by_description:
            sys.exit(f"record {description!r} of {path} is not in the run's data")
        questions = [row[0] for row in rows]
        extra[description] = metrics_of(by_description[description], questions, embedder(questions))
    return mean_over_records(list(extra.values())), extra


def report(method: str, variant: str, new: dict[str, float]) -> None:
    print(f"[{method}] {variant}: " + ", ".join(f"{k} {v:.3f}" for k, v in new.items()), flush=True)


def subject_only(run_dir: str, path: Path) -> int:
    """``--subject-only``: the on-subject share and diversity of every variant's stored questions."""
    from gflownet.core.metrics import Embedder
    from gflownet.core.modeling import resolve
    from gflownet.tasks.contradiction.leaks import subject_metrics

    evaluation = read_evaluation(path)
    cfg, by_description = run_records(run_dir)
    embedder = Embedder(resolve("packaged:all-minilm-l6-v2", cfg.paths.models_dir)[1])
    for method, variants in evaluation.get("examples", {}).items():
        for variant, per_record in variants.items():
            new, each = variant_means(per_record, by_description, path, embedder, subject_metrics)
            result = evaluation["results"][method][variant]
            result.update(new)
            for description, values in each.items():
                result.setdefault("per_record", {}).setdefault(description, {}).update(values)
            report(method, variant, new)
    path.write_text(json.dumps(evaluation, indent=2))
    print(f"rewrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--evaluation", required=True, help="evaluation.json of scripts/evaluate.py on that run")
    ap.add_argument("--subject-only", action="store_true",
                    help="add only names_subject_share and subject_diversity, read from the questions (no answerer)")
    args = ap.parse_args(argv)
    path = Path(args.evaluation)
    if args.subject_only:
        return subject_only(args.run_dir, path)

    from gflownet.core.metrics import Embedder
    from gflownet.core.modeling import resolve

    evaluation = read_evaluation(path)
    method, module, by_description = load_run(args.run_dir)
    if method not in evaluation.get("examples", {}):
        sys.exit(f"{path} has no samples under the run's own edit method {method!r} (it has "
                 f"{sorted(evaluation.get('examples', {}))}): rescoring uses the run's own answerer")
    embedder = module.embedder or Embedder(resolve("packaged:all-minilm-l6-v2", module.models_dir)[1])
    hook = getattr(module.task, "evaluation_metrics", None)
    if hook is None:
        sys.exit(f"the {module.task.name} task has no evaluation_metrics to recompute")
    for variant, per_record in evaluation["examples"][method].items():
        new, each = variant_means(per_record, by_description, path, embedder,
                                  lambda record, questions, emb: hook(module, record, questions, emb))
        result = evaluation["results"][method][variant]
        result.setdefault("before_rescoring", {k: result.get(k) for k in new})
        result.update(new)
        result["per_record"] = each
        report(method, variant, new)
    evaluation.setdefault("meta", {})["rescored_leaks"] = True
    path.write_text(json.dumps(evaluation, indent=2))
    print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
