"""The contradiction task's prompt carries the edit; train and validation are split by subject."""

import pytest
import torch

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
    with pytest.raises(ValueError, match="no chat template"):  # the tiny GPT-2 has none
        ContradictionTask(prompt_style="chat").prompt(a, tok)


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


def test_object_mask_keeps_the_edit_objects_out_of_samples_and_scores_under_the_same_mask(compose_cfg):
    """task.mask_objects: the sampler never writes a token of the edit's new or old object (per record,
    in the action space), and the loss scores trajectories under that same mask: the log-probabilities
    the sampler drew with, each record with its own objects forbidden."""
    from gflownet.core.sampling import sample
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.data import EditRecord
    from gflownet.tasks.contradiction.task import object_token_ids

    cfg = compose_cfg(["model=tiny_gpt2", "task.mask_objects=true"])
    module = build_module(cfg)
    records = [EditRecord("The Eiffel Tower", "Where is the Eiffel Tower?", "Paris", "Rome",
                          "The Eiffel Tower is in Paris.", "The Eiffel Tower is in Rome."),
               EditRecord("Hamlet", "Who wrote Hamlet?", "William Shakespeare", "Christopher Marlowe",
                          "Hamlet was written by William Shakespeare.", "Hamlet was written by Christopher Marlowe.")]
    tok = module.tokenizer
    banned = [set(object_token_ids(tok, [r.edited_answer, r.original_answer])) for r in records]
    assert {tok.encode(" Rome")[0], tok.encode(" Paris")[0]} <= banned[0]
    assert all(len(tok.decode([i]).strip()) >= 3 for b in banned for i in b)
    prompts = module.prompts_for(records)
    n = 16
    ids, mask = module.encode(prompts, n)
    rows = module.row_forbidden([p for p in prompts for _ in range(n)])
    assert rows.shape == (2 * n, module.space.vocab_size) and int(rows[0].sum()) == len(banned[0])
    bias = torch.zeros(module.space.vocab_size)  # make the objects likely, so that only the mask keeps them out
    bias[sorted(banned[0] | banned[1])] = 8.0
    hook = module.sampler.get_output_embeddings().register_forward_hook(lambda m, i, o: o + bias.to(o.dtype))
    try:
        module.rng.manual_seed(0)
        traj = module.sample(prompts, n, encoded=(ids, mask))
        for r in range(2 * n):
            used = set(traj.sample_ids[r, : int(traj.lengths[r])].tolist())
            assert not used & banned[r // n], (r, used & banned[r // n])
        log_pf, log_pterm = module.score_trajectories(ids, mask, traj.sample_ids, traj.lengths,
                                                      row_prompts=[p for p in prompts for _ in range(n)])
        torch.testing.assert_close(log_pf, traj.log_pf, atol=5e-5, rtol=0)
        torch.testing.assert_close(log_pterm, traj.log_pterm, atol=5e-5, rtol=0)
        with pytest.raises(ValueError, match="row_prompts"):
            module.score_trajectories(ids, mask, traj.sample_ids, traj.lengths)
        bad = rows.clone()
        bad[0, module.space.termination_id] = True  # a row that could never end
        with pytest.raises(ValueError, match="termination"):
            sample(module.sampler, ids, mask, module.space, tok.pad_token_id, row_forbidden=bad)
    finally:
        hook.remove()
    # without the mask the same bias puts the objects into the samples (the test can fail)
    plain = build_module(compose_cfg(["model=tiny_gpt2"]))
    hook = plain.sampler.get_output_embeddings().register_forward_hook(lambda m, i, o: o + bias.to(o.dtype))
    try:
        plain.rng.manual_seed(0)
        p2 = plain.prompts_for(records)
        t2 = plain.sample(p2, n)
        assert any(set(t2.sample_ids[r, : int(t2.lengths[r])].tolist()) & banned[r // n] for r in range(2 * n))
    finally:
        hook.remove()


def test_records_that_share_a_prompt_but_not_a_mask_are_refused_whatever_comes_first(compose_cfg, tmp_path):
    """The object mask is known by the prompt (the exchange, the replay buffer and rescoring carry only
    the prompt), so two records with one prompt and different objects are refused, in either order
    and at start-up, before a step. (Before: the first record seen set the mask for both, so the
    second could echo its own objects, and a trajectory drawn on one rank, or before a resume that met
    the records in another order, scored -inf under the other mask.)"""
    import json

    from gflownet.runner import build_module, run_training
    from gflownet.tasks.contradiction.data import EditRecord
    from gflownet.tasks.contradiction.task import object_token_ids

    a = EditRecord("Hamlet", "Who wrote Hamlet?", "William Shakespeare", "Christopher Marlowe",
                   "Hamlet was written by William Shakespeare.", "Hamlet was written by Christopher Marlowe.")
    b = EditRecord("Hamlet", "In which city is Hamlet set?", "Elsinore", "Oslo",
                   "Hamlet is set in Elsinore.", "Hamlet is set in Oslo.")
    subject = ["model=tiny_gpt2", "task.mask_objects=true", "task.prompt_format=subject", "gfn.diversity_embedder=null"]
    for first, second in ((a, b), (b, a)):
        module = build_module(compose_cfg(subject))
        module.prompts_for([first])
        with pytest.raises(ValueError, match="same sampler prompt"):
            module.prompts_for([second])
    # with the edit in the prompt each record keeps its own mask
    module = build_module(compose_cfg([*subject[:-2], "task.prompt_format=edit", "gfn.diversity_embedder=null"]))
    pa, pb = module.prompts_for([a, b])
    rows = module.row_forbidden([pa, pb])
    tok = module.tokenizer
    for row, record in zip(rows, (a, b)):
        assert set(row.nonzero().flatten().tolist()) == set(object_token_ids(tok, [record.edited_answer, record.original_answer]))
    # a training run on such data stops at start-up
    data = tmp_path / "edits.jsonl"
    other = {"subject": "The Eiffel Tower", "prompt": "In which city is the Eiffel Tower?", "original_answer": "Paris",
             "edited_answer": "Rome", "original_fact": "The Eiffel Tower is located in Paris.",
             "edit_fact": "The Eiffel Tower is located in Rome."}
    rows = [dict(subject=r.subject, prompt=r.prompt, original_answer=r.original_answer, edited_answer=r.edited_answer,
                 original_fact=r.original_fact, edit_fact=r.edit_fact) for r in (a, b)] + [other]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_cfg([*subject, f"data.path={data}", "data.val_size=1", "logger=none", "callbacks=none", "trainer.max_steps=1"])
    with pytest.raises(Exception, match="same sampler prompt"):
        run_training(cfg)
