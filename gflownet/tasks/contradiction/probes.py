"""CounterFact's own probes of an edit, for ``scripts/evaluate.py`` (through the contradiction task's
hooks ``probes_file``, ``benchmark_probes`` and ``edit_quality``) and ``scripts/edit_quality.py``.

* **Edit quality** as the knowledge-editing field measures it, with all edits applied together:
  efficacy (the new object is more probable than the true one after the edit prompt), paraphrase
  (the same on a rephrased prompt) and neighbourhood (the true object stays more probable than the
  new one on a prompt about another subject that shares it). "More probable" compares the mean
  per-token log-probability of " <object>" after the prompt, as ROME's
  ``compute_rewrite_quality_counterfact`` does; ``in_context`` puts "New fact: <edit fact>" first.
* **Benchmark probes**: every paraphrase prompt of an edit, as questions to put to the answerer.

Both read CounterFact JSON in the flattened layout (``prompt, subject, target_new, ground_truth,
rephrase_prompt, locality_prompt, locality_ground_truth``) or in ROME's nested one
(``records.flatten_counterfact``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gflownet.tasks.contradiction.records import flatten_counterfact

FIELDS = ("prompt", "subject", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth")


def _raw_rows(path: Path) -> list | None:
    """The JSON list of a CounterFact file (flattened, or ROME's layout), or None for any other file."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    is_cf = isinstance(rows, list) and bool(rows) and isinstance(rows[0], dict) and (
        "rephrase_prompt" in rows[0] or "requested_rewrite" in rows[0])
    return rows if is_cf else None


def is_counterfact(path: Path) -> bool:
    """Whether ``path`` is a CounterFact JSON file (flattened, or ROME's layout)."""
    return _raw_rows(path) is not None


def counterfact_json(path: Path) -> list[dict]:
    """The rows of a CounterFact JSON file in the flattened layout (ROME's nested rows flattened);
    ValueError for a file that is not one."""
    rows = _raw_rows(path)
    if rows is None:
        raise ValueError(f"{path}: not a CounterFact JSON file (a list of records with rephrase_prompt, or ROME's with "
                         "requested_rewrite)")
    return [flatten_counterfact(row, f"{path}[{i}]") if isinstance(row, dict) else row for i, row in enumerate(rows)]


def _key(subject, new) -> tuple[str, str]:
    return " ".join(str(subject).split()), " ".join(str(new).split())


def with_one_paraphrase(row):
    """A row whose ``rephrase_prompt`` is a list (ROME's layout keeps every paraphrase) with its first:
    edit quality scores one paraphrase per edit."""
    prompts = row.get("rephrase_prompt") if isinstance(row, dict) else None
    return {**row, "rephrase_prompt": prompts[0]} if isinstance(prompts, list) and prompts else row


def counterfact_rows(path: Path, records: list) -> list[dict] | None:
    """Each record's CounterFact row (matched by subject and new object) with one paraphrase and one
    neighbourhood prompt, or None when any is missing."""
    by_edit: dict[tuple[str, str], dict] = {}
    for row in map(with_one_paraphrase, counterfact_json(path)):
        if isinstance(row, dict) and all(isinstance(row.get(f), str) for f in FIELDS):
            by_edit.setdefault(_key(row["subject"], row["target_new"]), row)
    found = [by_edit.get((r.subject, r.edited_answer)) for r in records]
    return None if any(f is None for f in found) else found


def paraphrase_probes(path: Path, records: list) -> list[list[str]]:
    """Each record's CounterFact paraphrase prompts (all of them), matched by subject and new object."""
    by_edit: dict[tuple[str, str], list[str]] = {}
    for row in counterfact_json(path):
        prompts = row.get("rephrase_prompt")
        for p in prompts if isinstance(prompts, list) else [prompts]:
            if isinstance(p, str) and p.strip():
                by_edit.setdefault(_key(row.get("subject", ""), row.get("target_new", "")), []).append(" ".join(p.split()))
    out = []
    for r in records:
        found = by_edit.get((r.subject, r.edited_answer))
        if not found:
            raise ValueError(f"{path}: no paraphrase prompt for the edit {r.subject!r} -> {r.edited_answer!r}")
        out.append(found)
    return out


@torch.no_grad()
def mean_logp(model, tok, prompt: str, target: str) -> float:
    p = tok.encode(prompt, add_special_tokens=False)
    t = tok.encode(" " + target.strip(), add_special_tokens=False)
    device = next(model.parameters()).device
    lp = model(input_ids=torch.tensor([p + t], device=device)).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
    return lp.gather(-1, torch.tensor(t, device=device)[:, None]).mean().item()


def scores(model, tok, rows: list[dict], context: list[str]) -> dict[str, float]:
    """Efficacy, paraphrase and neighbourhood (%) of ``rows`` (flattened CounterFact rows), each prompt
    after its ``context``."""
    eff = par = nei = 0
    for row, ctx in zip(rows, context):
        new, true = row["target_new"], row["ground_truth"]
        eff += mean_logp(model, tok, ctx + row["prompt"], new) > mean_logp(model, tok, ctx + row["prompt"], true)
        par += mean_logp(model, tok, ctx + row["rephrase_prompt"], new) > mean_logp(model, tok, ctx + row["rephrase_prompt"], true)
        loc_true = row["locality_ground_truth"]
        nei += mean_logp(model, tok, ctx + row["locality_prompt"], loc_true) > mean_logp(model, tok, ctx + row["locality_prompt"], new)
    n = len(rows)
    return {"efficacy": 100 * eff / n, "paraphrase": 100 * par / n, "neighbourhood": 100 * nei / n}


def edit_quality(module, method: str, path: Path, records: list) -> dict | None:
    """Edit quality of the answerer the module's reward now holds, on the evaluated edits: beside every
    leak figure, whether the edit took. None without an answerer, or when the file lacks a record's
    paraphrase or neighbourhood prompt."""
    from gflownet.editing.requests import request_from_record
    from gflownet.tasks.contradiction.leaks import find_answerer

    rows, answerer = counterfact_rows(path, records), find_answerer(module.reward)
    if rows is None or answerer is None:
        return None
    context = [f"New fact: {request_from_record(r).fact()}\n" if method == "in_context" else "" for r in records]
    with answerer.model_context():  # a shared answerer is the sampler with its adapters off
        return dict(scores(answerer.model, answerer.tokenizer, rows, context), edits=len(rows))
