"""The contradiction task's prompt carries the edit; train and validation are split by subject."""

import pytest

from gflownet.core.replay_buffer import prompt_key
from gflownet.tasks.contradiction.data import EditRecord, convert, split_by_subject
from gflownet.tasks.contradiction.task import ContradictionTask


def record(subject, relation, new, old="Paris"):
    return EditRecord(subject, relation, old, new, f"{relation} {old}", f"{relation} {new}")


def test_prompt_carries_subject_relation_and_edit(tiny_gpt2):
    _, tok = tiny_gpt2
    task = ContradictionTask(prompt_style="plain")
    a = record("The Eiffel Tower", "The Eiffel Tower is located in", "Rome")
    b = record("The Eiffel Tower", "The Eiffel Tower was designed by", "Rome")
    pa, pb = task.prompt(a, tok), task.prompt(b, tok)
    assert pa == 'Generate a question about The Eiffel Tower. Edit: "The Eiffel Tower is located in" -> Rome:\nQuestion:'
    assert pa != pb and prompt_key(pa) != prompt_key(pb)  # two edits of one subject: two prompts, log Zs, buffer keys
    subject_only = ContradictionTask(prompt_style="plain", prompt_format="subject")
    assert subject_only.prompt(a, tok) == subject_only.prompt(b, tok) == "Generate a question about The Eiffel Tower:\nQuestion:"
    with pytest.raises(ValueError, match="unknown task.prompt_format"):
        ContradictionTask(prompt_format="relation")


def test_split_by_subject_keeps_every_edit_of_a_subject_on_one_side():
    recs = [record(s, f"{s} rel{i}", f"new{i}") for s in "ABCDEFGH" for i in range(1 + "ABCDEFGH".index(s) % 3)]
    train, val = split_by_subject(recs, val_size=4, seed=3)
    assert len(train) + len(val) == len(recs) and len(val) >= 4
    assert not {r.subject for r in train} & {r.subject for r in val}
    assert split_by_subject(recs, 4, 3) == (train, val)  # seeded
    with pytest.raises(ValueError, match="leaves no training records"):
        split_by_subject(recs, val_size=len(recs), seed=0)


def test_zsre_edits_share_subjects_and_the_prompt_and_split_handle_it(shared_data, tiny_gpt2):
    """On the original's zsRE data, 576 of the 986 kept records share their subject with another edit. With the
    edit in the prompt every record has its own prompt (one log Z and buffer key per edit), and the subject split
    leaves no validation subject in training."""
    from collections import Counter

    _, tok = tiny_gpt2
    records, report, _ = convert(shared_data / "ZSRE_1000.pkl")
    assert report.kept == 986
    by_subject = Counter(r.subject for r in records)
    assert sum(n for n in by_subject.values() if n > 1) == 576
    task = ContradictionTask(prompt_style="plain")
    edit_prompts = {task.prompt(r, tok) for r in records}
    subject_prompts = {ContradictionTask(prompt_style="plain", prompt_format="subject").prompt(r, tok) for r in records}
    distinct_edits = {(r.subject, r.prompt, r.edited_answer) for r in records}
    assert len(edit_prompts) == len(distinct_edits) > len(subject_prompts) == len(by_subject)
    train, val = split_by_subject(records, val_size=50, seed=0)
    assert len(val) >= 50 and not {r.subject for r in train} & {r.subject for r in val}
