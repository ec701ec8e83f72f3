"""The contradiction task: the sampler asks questions about an edit; a good question is one whose
answer, given by the answerer, the judge finds contradicting the edit fact.

The prompt carries the edit itself, not only its subject (docs/design.md, "Conditioning on the
edit"): a subject can carry several edits (zsRE: 576 of 986 records share a subject with another
edit), while the reward depends on the edit. A subject-only prompt would give every edit of a
subject the same sampler distribution, the same log Z and the same replay-buffer key, while their
rewards differ. The prompt states the subject, the relation (the record's prompt text) and the
edited answer:

    Generate a question about The Eiffel Tower. Edit: "The Eiffel Tower is located in" -> Rome.

``prompt_format: subject`` restores the original's subject-only prompt.

``mask_objects: true`` forbids the sampler the tokens of the edit's new and old objects (in the
action space, per record), so that a question on which the answerer contradicts the edit is not
the answerer echoing an object the question named. Every spelling variant (with and without a
leading space, lower case, capitalised; whole answer and each word) is tokenised and each token of
three or more letters or digits that is not a common function word is forbidden; shorter tokens
("in", "of") stay allowed, so the mask cannot cut out ordinary words wholesale.
"""

from __future__ import annotations

from pathlib import Path

from gflownet.core.protocols import ActionLimits, Rollout
from gflownet.tasks.contradiction.data import EditRecord

CONTRADICTION_LOG_THRESHOLD = -0.6931471805599453  # log 0.5: log p(contradiction) above it counts as a contradiction


def contradiction_rate(log_c, threshold: float = CONTRADICTION_LOG_THRESHOLD) -> float:
    """Share of judged answers with p(contradiction) > 0.5 (NaN entries, never judged, are left out)."""
    import torch

    valid = log_c[~torch.isnan(log_c)]
    return float((valid > threshold).float().mean()) if valid.numel() else 0.0


FUNCTION_WORDS = frozenset("the and for with from that this was are were has have had not but its his her their who what "
                           "which when where how why did does into onto about".split())


def object_token_ids(tokenizer, objects) -> list[int]:
    """Tokens that spell any of ``objects`` (see the module docstring for which)."""
    variants = set()
    for obj in objects:
        obj = " ".join(str(obj).split())
        if not obj:
            continue
        for text in {obj, *obj.split()}:
            for form in {text, text.lower(), text[:1].upper() + text[1:]}:
                variants.update({form, " " + form})
    ids = set()
    for v in variants:
        for i in tokenizer.encode(v, add_special_tokens=False):
            piece = tokenizer.decode([i]).strip()
            letters = sum(c.isalnum() for c in piece)
            if letters >= 3 and piece.lower() not in FUNCTION_WORDS:
                ids.add(int(i))
    return sorted(ids)


def instruction(record: EditRecord, prompt_format: str) -> str:
    if prompt_format == "subject":
        return f"Generate a question about {record.subject}"
    if prompt_format == "edit":
        return f'Generate a question about {record.subject}. Edit: "{record.prompt}" -> {record.edited_answer}'
    raise ValueError(f"unknown task.prompt_format {prompt_format!r}: use edit or subject")


LEAK_BUDGETS = (1, 2, 4, 8, 16, 32)  # questions per edit at which scripts/evaluate.py counts leaks too


class ContradictionTask:
    name = "contradiction"
    # what the rewards read: the facts (the judge), the subject and answers (the leak margin: its guard and objects),
    # the edit's own prompt (reward.took_only: whether the edit took)
    context_fields = ("edit_fact", "original_fact", "subject", "edited_answer", "original_answer", "prompt")
    # optional hooks (core.protocols.TASK_HOOKS) for scripts/evaluate.py
    evaluation_variants = ("trained", "untrained", "plain_prompting")
    hit = ("contradiction", "log_contradiction", CONTRADICTION_LOG_THRESHOLD)
    answerer_edits = True

    def __init__(self, min_len: int = 5, max_len: int = 25, forbidden_tokens=("eos", "newline", "termination"),
                 prompt_style: str = "plain", prompt_format: str = "edit", mask_objects: bool = False):
        if prompt_style not in {"plain", "chat"}:
            raise ValueError(f"unknown task.prompt_style {prompt_style!r}: use plain or chat")
        instruction(EditRecord("s", "p", "a", "b", "f", "g"), prompt_format)  # fail early on a bad format
        self.limits = ActionLimits("?", int(min_len), int(max_len), tuple(forbidden_tokens))
        self.prompt_style, self.prompt_format = prompt_style, prompt_format
        self.mask_objects = bool(mask_objects)
        self.settings = {"mask_objects": self.mask_objects}

    @property
    def forbidden_ids(self):
        """The optional hook (``TASK_HOOKS``): with ``mask_objects``, a record's forbidden tokens are its
        edit's new and old objects (see the module docstring); without, there is no per-record mask."""
        return self.object_ids if self.mask_objects else None

    @staticmethod
    def object_ids(record: EditRecord, tokenizer) -> list[int]:
        """Token ids of the edit's new and old objects."""
        return object_token_ids(tokenizer, [record.edited_answer, record.original_answer])

    def prompt(self, record: EditRecord, tokenizer) -> str:
        """The sampler's prompt (plain text, or the chat-template form for instruct models)."""
        text = instruction(record, self.prompt_format)
        if self.prompt_style == "plain":
            return f"{text}:\nQuestion:"
        if not tokenizer.chat_template:
            raise ValueError("task.prompt_style=chat but the tokenizer has no chat template; use task.prompt_style=plain")
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{text}."}], add_generation_prompt=True,
                                             tokenize=False)

    @staticmethod
    def records_from(path) -> list[EditRecord]:
        """Edit records of a file (``scripts/evaluate.py --data``): a converted ``.jsonl``, or a raw zsRE or
        CounterFact file, converted on the fly."""
        from gflownet.tasks.contradiction.data import convert, load_records

        path = Path(path)
        return load_records(path) if path.suffix == ".jsonl" else convert(path)[0]

    @staticmethod
    def probes_file(path) -> bool:
        from gflownet.tasks.contradiction.probes import is_counterfact

        return is_counterfact(Path(path))

    @staticmethod
    def benchmark_probes(path, records: list) -> list[list[str]]:
        """Every CounterFact paraphrase prompt of each record (``probes.paraphrase_probes``)."""
        from gflownet.tasks.contradiction.probes import paraphrase_probes

        return paraphrase_probes(Path(path), records)

    @staticmethod
    def edit_quality(module, method: str, path, records: list) -> dict | None:
        """Efficacy, paraphrase and neighbourhood of the reward's edited answerer (``probes.edit_quality``)."""
        from gflownet.tasks.contradiction.probes import edit_quality

        return edit_quality(module, method, Path(path), records)

    @staticmethod
    def counted_edits(module, records: list) -> list[bool] | None:
        """Per record, whether a leak on it would count: its edit took under the reward's (edited)
        answerer and it can be read (``leaks.edits_took``, ``leaks.readable``); None without an
        answerer. ``scripts/evaluate.py --took-only`` samples only these records."""
        from gflownet.tasks.contradiction.leaks import edits_took, find_answerer, readable

        answerer = find_answerer(module.reward)
        if answerer is None:
            return None
        took = edits_took(answerer, [r.prompt for r in records], [r.edit_fact for r in records],
                          [r.subject for r in records], [r.original_answer for r in records],
                          [r.edited_answer for r in records])
        return [t and readable(r.subject, r.original_answer) for t, r in zip(took, records)]

    def baseline_prompt(self, record: EditRecord, tokenizer) -> str:
        """The base model asked in plain words (scripts/evaluate.py's plain_prompting baseline)."""
        text = f"Ask one question about {record.subject}."
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        return f"{text}\nQuestion:"

    def describe(self, record: EditRecord) -> str:
        return record.edit_fact

    def metrics(self, rollout: Rollout) -> dict[str, float]:
        log_c = rollout.components.get("log_contradiction")
        return {} if log_c is None else {"contradiction_rate": contradiction_rate(log_c)}

    def evaluation_metrics(self, module, record: EditRecord, samples: list[str], embeddings=None) -> dict[str, float]:
        """``scripts/evaluate.py``: verified leaks of one record's samples under the reward's (edited)
        answerer, and whether the edit took (``leaks.leak_metrics``); none without an answerer."""
        from gflownet.tasks.contradiction.leaks import find_answerer, leak_metrics

        answerer = find_answerer(module.reward)
        # the counts at smaller budgets are read from the first questions: 16 is tabulated, all are plotted
        return {} if answerer is None else leak_metrics(answerer, record, samples, embeddings, budgets=LEAK_BUDGETS)
