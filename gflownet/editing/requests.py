"""What a knowledge edit asks of a model: make ``prompt`` (which names ``subject``) continue with
``target_new`` instead of ``target_true``.

An edit record of the contradiction task (``gflownet.tasks.contradiction.data.EditRecord``) holds a
relation prompt that may be a question ("In which city is the Eiffel Tower?") and a declarative edit
fact ("The Eiffel Tower is located in Rome."). Weight edits work on a declarative prompt that ends
where the new object begins, so the request's prompt is the edit fact with its edited answer (and
final full stop) cut off when the fact ends with it, and the record's relation prompt otherwise
(CounterFact's prompts already end there).

A request may also carry ``contexts``: further full texts, each ending where the new object begins,
on which the edit must hold too (the edit prompt as a deployed chat model is asked it, for
example). LoRA-FT trains on them beside the prompt; they are part of the request, so of its digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class EditRequest:
    subject: str
    prompt: str  # the text before the object, naming the subject
    target_new: str
    target_true: str
    contexts: tuple[str, ...] = ()  # further texts before the new object on which the edit must hold (LoRA-FT)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.contexts:  # a request without contexts keeps the digest it always had
            del out["contexts"]
        else:
            out["contexts"] = list(self.contexts)
        return out

    def fact(self) -> str:
        """The edit as one sentence (what an in-context edit states)."""
        return f"{self.prompt} {self.target_new}."


def relation_prompt(fact: str, answer: str) -> str | None:
    """The fact with its answer (and a final full stop) cut off its end, or None when it does not end
    with the answer: "The Eiffel Tower is located in Rome." -> "The Eiffel Tower is located in"."""
    fact, answer = " ".join(str(fact).split()), " ".join(str(answer).split())
    for body in (fact, fact[:-1].rstrip() if fact.endswith(".") else fact):  # "... Warner Bros." keeps its stop
        if answer and body.endswith(answer) and len(body) > len(answer):
            return body[: -len(answer)].rstrip()
    return None


def request_from_record(record: Any) -> EditRequest:
    """The edit request of a contradiction-task edit record (see the module docstring)."""
    prompt = relation_prompt(record.edit_fact, record.edited_answer) or record.prompt.strip()
    return EditRequest(subject=record.subject.strip(), prompt=prompt, target_new=record.edited_answer.strip(),
                       target_true=record.original_answer.strip())


def requests_digest(requests: Sequence[EditRequest]) -> str:
    """A digest of the edits, in order: a saved edit set records it and is refused for other edits."""
    blob = json.dumps([r.to_dict() for r in requests], sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def subject_span(text: str, subject: str) -> tuple[int, int] | None:
    """Character span of the last mention of ``subject`` in ``text``: exact, then ignoring case,
    then without a leading article ("The Eiffel Tower" in "...is the Eiffel Tower?"). None if absent."""
    candidates = [subject]
    for article in ("The ", "the ", "A ", "a ", "An ", "an "):
        if subject.startswith(article) and len(subject) > len(article):
            candidates.append(subject[len(article):])
    for cand in candidates:
        i = text.rfind(cand)
        if i < 0:
            i = text.lower().rfind(cand.lower())
        if i >= 0:
            return i, i + len(cand)
    return None


def subject_last_token(tokenizer, text: str, subject: str) -> int:
    """Index of the last token of the subject's last mention in ``text`` (tokenized without special
    tokens). ROME reads and writes the fact at this position."""
    span = subject_span(text, subject)
    if span is None:
        raise ValueError(f"subject {subject!r} does not occur in {text!r}: a weight edit needs the subject in the "
                         "prompt (fix the record, or use answerer/edit=in_context)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    last = None
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if start < span[1] and end > start:
            last = i
    if last is None:
        raise ValueError(f"could not map subject {subject!r} to tokens of {text!r}")
    return last


def lookup_position(tokenizer, text: str, subject: str) -> int:
    """Where ROME reads and writes the fact: the subject's last token, or the text's last token when
    the subject is not in it (ROME's ``fact_token: last``; e.g. "The largest ocean is" -> Atlantic,
    whose subject is the answer itself)."""
    if subject_span(text, subject) is None:
        return len(tokenizer.encode(text, add_special_tokens=False)) - 1
    return subject_last_token(tokenizer, text, subject)
