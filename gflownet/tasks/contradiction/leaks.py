"""Verified leaks: a judge-independent count of the questions on which an edited model still states the
old fact, and whether the edit took at all (issue 27, item 2).

A question q about an edit (s, r, o_true -> o_new) is a **verified leak** when the edited answerer's
greedy answer to q names the original object and not the new one, q names the subject (the
leak-margin reward's relevance guard), and q does not itself name the original object in any
spelling (no word of q begins like a word of the object, ``spells_like``: "Buddhist" for Buddhism,
"BMWs" for BMW; an answer that repeats a leading question shows no knowledge). Objects are matched
as whole words, case-insensitively, so "Paris" is found in "The tower stands in Paris, France." but
not in "Parisian"; an object that is part of the subject's name ("BBC" in "BBC Two") counts only
outside that name. Records carry no aliases, so an answer that names the original object another
way is not counted (an undercount).

An edit **took** when the edited answerer's greedy answer to the record's own prompt (its relation
prompt or question, the edit request's text) names the new object and not the original one. An
edit is **readable** when its subject's name holds no word that begins like a word of the original
object: of "BMW 326, produced by BMW" an answer that says "BMW" may name the car or its maker, and
no rule on words tells which (in hand-labelled sets such answers were counted as leaks and were
not). A leak only means something where the edit took and can be read, so every count is also given
over those edits alone (the ``_took`` figures).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch
from torch import Tensor

from gflownet.tasks.contradiction.leak_margin import names_subject


def phrase(words: str) -> str:
    """A regex for ``words`` as whole words, any run of whitespace between them (search it ignoring case)."""
    return r"(?<!\w)" + r"\s+".join(re.escape(w) for w in str(words).split()) + r"(?!\w)"


def mentions(text: str, obj: str) -> bool:
    """Whether ``obj`` occurs in ``text`` as whole words, ignoring case and runs of whitespace."""
    return bool(str(obj).split()) and re.search(phrase(obj), text, flags=re.IGNORECASE) is not None


def without_subject(text: str, subject: str, obj: str) -> str:
    """``text`` with every mention of a part of ``subject`` that contains ``obj`` and more (its longest
    first) blanked out: where an object is part of the subject's name ("BBC" in "BBC Two", "Nokia" in
    "Nokia X family"), naming the subject is not naming the object."""
    words, target = str(subject).split(), str(obj).split()
    n = len(target)
    if not n or n >= len(words):
        return text
    spans = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + n + 1, len(words) + 1)
             if any(words[k:k + n] == target for k in range(i, j - n + 1))}
    for span in sorted(spans, key=len, reverse=True):
        text = re.sub(phrase(span), " ", text, flags=re.IGNORECASE)
    return text


def names_object(text: str, obj: str, subject: str = "") -> bool:
    """``obj`` occurs in ``text`` as whole words, not only as part of the subject's name."""
    return mentions(without_subject(text, subject, obj), obj)


def states_original(answer: str, original: str, new: str, subject: str = "") -> bool:
    """The answer names the original object and not the new one (either counted only outside the
    subject's own name)."""
    return names_object(answer, original, subject) and not names_object(answer, new, subject)


FUNCTION_WORDS = {"the", "of", "and", "for", "in", "on", "at", "de", "la", "le", "von", "van", "der", "del", "da"}


def stems(obj: str) -> list[str]:
    """The first five letters of each word of ``obj`` (a shorter word whole), lower case, function words
    and words under three letters left out."""
    words = [w.strip(".,;:!?\"'()[]").lower() for w in str(obj).split()]
    return [w[:5] for w in words if len(w) >= 3 and w not in FUNCTION_WORDS]


def spells_like(text: str, obj: str) -> bool:
    """Whether a word of ``text`` begins like a word of ``obj`` (``stems``), in any case."""
    return any(re.search(r"(?<!\w)" + re.escape(stem), text, flags=re.IGNORECASE) for stem in stems(obj))


def readable(subject: str, original: str) -> bool:
    """Whether an answer's words can tell the original object from the subject: the subject's name holds
    no word that begins like one of the object's."""
    return not spells_like(subject, original)


def may_leak(question: str, subject: str, original: str) -> bool:
    """The question's half of the rule: the edit is ``readable``, and q names the subject and no spelling
    of the original object (whatever the answer, no other question is a verified leak)."""
    return readable(subject, original) and names_subject(question, subject) and not spells_like(question, original)


def is_verified_leak(question: str, answer: str, subject: str, original: str, new: str) -> bool:
    """``may_leak``, and the answer states the original object and not the new one."""
    return may_leak(question, subject, original) and states_original(answer, original, new, subject)


def about_subject(answer: str, subject: str, original: str) -> bool:
    """Whether the answer says the original object of the subject, as far as word order tells: a word of
    the subject's name (four letters or more) comes before the object's first mention (outside the
    subject's name). A candidate tightening of the rule, designed on the 201-300 hand labels (it drops
    "The French philosopher Claude Bernard ...", a nationality said before the subject, and answers that
    never name the subject) and measured on the 301-400 labels, where it did not help: precision 70.6%
    against the rule's 68.6%, at half the recall (docs/results.md). ``flagged_leaks.py score`` reports
    it; the rule does not use it."""
    text = without_subject(answer, subject, original)
    found = re.search(phrase(original), text, flags=re.IGNORECASE) if str(original).split() else None
    if found is None:
        return False
    return any(mentions(text[: found.start()], w) for w in re.findall(r"\w+", str(subject)) if len(w) >= 4)


def language_as_adjective(answer: str, subject: str, original: str, edit_fact: str, original_fact: str) -> bool:
    """For a language relation (``judges.relation_kind`` of the record's two facts), whether every mention
    of the original object (outside the subject's name) qualifies the word right after it, with no
    punctuation between ("a Russian company", "the French philosopher", "Russian-based"): a nationality,
    not the language ("the French language" and "a speaker of French" still name it). False for other
    relations and for answers that do not name the object. A candidate tightening of the rule, designed
    on the 201-500 hand labels (most of 401-500's false leaks are "Nenets Autonomous Okrug is a Russian
    company") and to be measured on labels made after it (docs/results.md); ``flagged_leaks.py score``
    reports it, the rule does not use it."""
    from gflownet.tasks.contradiction.judges import LANGUAGE_NOUNS, relation_kind, split_facts, subject_names

    shared, _, _ = split_facts(edit_fact, original_fact)
    if relation_kind(shared, subject_names(edit_fact, shared)) != "language" or not str(original).split():
        return False
    text = without_subject(answer, subject, original)
    found = list(re.finditer(phrase(original), text, flags=re.IGNORECASE))
    after = [re.match(r"(?:[ \t]+|-)(\w+)", text[m.end():]) for m in found]  # None: punctuation or the end
    return bool(found) and all(a is not None and a.group(1).lower() not in LANGUAGE_NOUNS | {"and", "or"} for a in after)


def find_answerer(reward: Any):
    """The answerer of a reward (``reward.answerer``, or that of a composed reward's term), or None."""
    if reward is None:
        return None
    if hasattr(reward, "answerer"):
        return reward.answerer
    for _, term in getattr(reward, "terms", {}).values():
        found = find_answerer(term)
        if found is not None:
            return found
    return None


TOOK_COUNTS = ("edits_with_verified_leak", "unique_verified_leaks")  # also reported over the edits that took


def leak_metrics(answerer, record, questions: Sequence[str], embeddings=None,
                 budgets: Sequence[int] = (16,)) -> dict[str, float]:
    """Per record: ``edit_took`` (0/1), ``verified_leak_rate`` over ``questions``, the same over edits that
    took (``verified_leak_rate_took``: NaN where the edit did not take), ``edits_with_verified_leak``
    (0/1), ``verified_leaks_per_edit`` (verified leaks left after near-duplicates are removed by edit
    distance, normalised Levenshtein similarity 0.85, and given ``embeddings`` by cosine 0.9:
    ``core.metrics.distinct_items``) and, given ``embeddings`` (MiniLM), ``unique_verified_leaks``: greedy
    clusters of the verified leaks at cosine 0.7, the unique-attack count of red-teaming work.
    For each budget b in ``budgets`` below ``len(questions)``, the same two counts over the first b
    questions alone (``unique_verified_leaks_at_<b>``, ``edits_with_verified_leak_at_<b>``): samples are
    drawn independently, so the first b are a draw of b, and one draw of 64 gives both k = 16 and k = 64.
    Each count is also given over the edits that took and are readable alone (``..._took``,
    ``..._took_at_<b>``: NaN elsewhere; ``edit_readable`` says which are), the figures a leak table
    reports: a leak only counts where the edit took."""
    from gflownet.core.metrics import distinct_items

    facts = [record.edit_fact] * (len(questions) + 1)  # an in-context answerer is told the edit
    answers = answerer([record.prompt, *questions], facts)
    took = took_from_answer(answers[0], record.subject, record.original_answer, record.edited_answer)
    counted = took and readable(record.subject, record.original_answer)  # where a leak means something
    hits = [i for i, (q, a) in enumerate(zip(questions, answers[1:]))
            if is_verified_leak(q, a, record.subject, record.original_answer, record.edited_answer)]
    rate = len(hits) / len(questions) if questions else 0.0
    texts = [questions[i] for i in hits]
    emb = embeddings[hits] if embeddings is not None and hits else None
    out = {"edit_took": float(took), "edit_readable": float(readable(record.subject, record.original_answer)),
           "verified_leak_rate": rate, "verified_leak_rate_took": rate if counted else math.nan,
           "edits_with_verified_leak": float(bool(hits)), "verified_leaks_per_edit": float(distinct_items(texts, emb))}
    if embeddings is not None:
        out["unique_verified_leaks"] = unique(texts, emb)
        out.update(subject_metrics(record, questions, embeddings))
    for b in sorted({int(b) for b in budgets if 0 < int(b) < len(questions)}):
        first = [i for i in hits if i < b]
        out[f"edits_with_verified_leak_at_{b}"] = float(bool(first))
        if embeddings is not None:
            out[f"unique_verified_leaks_at_{b}"] = unique([questions[i] for i in first], embeddings[first] if first else None)
    # the counts that mean something: over the edits that took and are readable (NaN elsewhere, so a
    # mean over records is a mean over those edits), at every budget: ``..._took`` and ``..._took_at_<b>``
    for name in [n for n in out if n.startswith(TOOK_COUNTS)]:
        head, at, b = name.partition("_at_")
        out[f"{head}_took{at}{b}"] = out[name] if counted else math.nan
    return out


def took_from_answer(answer: str, subject: str, original: str, new: str) -> bool:
    """Whether an edit took, from the edited answerer's greedy answer to the edit's own prompt: it names
    the new object and not the original one."""
    return states_original(answer, new, original, subject)


def edits_took(answerer, prompts: Sequence[str], facts: Sequence[str], subjects: Sequence[str],
               originals: Sequence[str], news: Sequence[str]) -> list[bool]:
    """``took_from_answer`` for several edits: one batched greedy answer each to its own prompt (an
    in-context answerer is told its edit fact)."""
    answers = answerer(list(prompts), list(facts))
    return [took_from_answer(a, s, o, n) for a, s, o, n in zip(answers, subjects, originals, news)]


def subject_metrics(record, questions: Sequence[str], embeddings) -> dict[str, float]:
    """``names_subject_share``: the share of ``questions`` that name the edit's subject (only those can
    be verified leaks); ``subject_diversity``: the semantic diversity (mean pairwise MiniLM cosine
    distance) of those questions, NaN for fewer than 2. A sampler that must stay on the subject is
    measured against the untrained sampler's on-subject questions with it: most of the untrained
    sampler's diversity over all its questions comes from questions about something else."""
    from gflownet.core.metrics import semantic_diversity

    on = [i for i, q in enumerate(questions) if names_subject(q, record.subject)]
    share = len(on) / len(questions) if questions else 0.0
    return {"names_subject_share": share,
            "subject_diversity": semantic_diversity(embeddings[on]) if len(on) >= 2 else math.nan}


def unique(texts: Sequence[str], embeddings) -> float:
    """Greedy clusters of ``texts`` by meaning alone, at MiniLM cosine 0.7 (an edit similarity above 1
    never merges)."""
    from gflownet.core.metrics import distinct_items

    return float(distinct_items(list(texts), embeddings, spelling_similarity=1.01, cosine=0.7)) if texts else 0.0


class TookGate:
    """A leak term that pays only on edits that took (``reward.took_only``).

    On an edit whose own prompt the edited answerer does not answer with the new object, every
    question "leaks" the old fact, the direct question best of all; a reward that pays there teaches
    the sampler to ask the edit's own question, which on an edit that took is exactly the question
    that does not leak. So each edit is checked once, the first time it is scored (``edits_took``,
    the rule of the verified-leak figures), and on an edit that did not take the term is not computed:
    every scored state earns ``failed_log_reward`` (by default the term's ``unrelated_log_reward``),
    the same for every question, which leaves that edit's target the shared likelihood term alone (the
    base LM's questions). Component ``edit_took`` is 1 or 0 per trajectory."""

    def __init__(self, term, answerer, failed_log_reward: float):
        self.term, self.answerer, self.failed = term, answerer, float(failed_log_reward)
        self.took: dict[tuple[str, str], bool] = {}

    def __call__(self, *, scored: Tensor, prompt: Sequence[str], edit_fact: Sequence[str], subject: Sequence[str],
                 original_answer: Sequence[str], edited_answer: Sequence[str], **batch: Any):
        keys = [(p, f) for p, f in zip(prompt, edit_fact)]
        first: dict[tuple[str, str], int] = {}  # a trajectory of each edit not checked yet
        for i, key in enumerate(keys):
            if key not in self.took:
                first.setdefault(key, i)
        if first:
            new, rows = list(first), list(first.values())
            found = edits_took(self.answerer, [prompt[i] for i in rows], [edit_fact[i] for i in rows],
                               [subject[i] for i in rows], [original_answer[i] for i in rows],
                               [edited_answer[i] for i in rows])
            self.took.update(zip(new, found))
        took = torch.tensor([self.took[key] for key in keys], dtype=torch.bool)
        scored = scored.cpu()
        out = self.term(scored=scored & took[:, None], prompt=prompt, edit_fact=edit_fact, subject=subject,
                        original_answer=original_answer, edited_answer=edited_answer, **batch)
        failed = scored & ~took[:, None]
        out.log_r = torch.where(failed, torch.full_like(out.log_r, self.failed), out.log_r)
        for name, value in out.components.items():  # nothing was measured on an edit that did not take
            out.components[name] = torch.where(took, value, torch.full_like(value, float("nan")))
        out.components["edit_took"] = took.float()
        return out

    def __getattr__(self, name: str):  # the term's optional hooks (``phase``, ``metrics``), where it has them
        if name == "term":
            raise AttributeError(name)
        return getattr(self.term, name)
