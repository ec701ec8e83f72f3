import json
import math
import subprocess
import sys

import pytest

from gflownet.tasks.contradiction.data import (
    FIELDS, EditDataModule, EditRecord, clean_records, convert, detect_layout, load_records, write_jsonl,
)
from tests.conftest import ROOT

EXAMPLE = ROOT / "data" / "example_edits.jsonl"


def row(**over):
    base = dict(subject="X", prompt="X was made by", original_answer="A", edited_answer="B",
                original_fact="X was made by A", edit_fact="X was made by B")
    base.update(over)
    return base


def test_zsre_pkl_conversion_counts(shared_data):
    records, report, layout = convert(shared_data / "ZSRE_1000.pkl")
    assert layout == "zsre_pkl"
    assert (report.total, report.kept) == (1000, 986)
    assert dict(report.dropped) == {"nan_answer": 8, "duplicate": 6}
    assert not any(r.edit_fact.endswith(" nan") for r in records)
    # answers that started with a space in the raw file are normalised
    assert all(r.edited_answer == r.edited_answer.strip() for r in records)
    assert any(r.edited_answer == "Colt Motorcycles" for r in records)


def test_zsre_mend_conversion_counts(shared_data):
    records, report, layout = convert(shared_data / "zsre_mend_train-1k.json")
    assert layout == "zsre_mend"
    assert (report.total, report.kept, dict(report.dropped)) == (1000, 998, {"empty_field": 2})
    first = records[0]
    assert (first.subject, first.prompt, first.original_answer, first.edited_answer) == (
        "UniFirst", "What is the product made by UniFirst?", "uniform", "unmanned aircraft")
    assert first.edit_fact == "What is the product made by UniFirst? unmanned aircraft"


def test_counterfact_conversion_counts(shared_data):
    records, report, layout = convert(shared_data / "counterfact-val.json")
    assert layout == "counterfact"
    assert (report.total, report.kept, sum(report.dropped.values())) == (1919, 1919, 0)
    r = records[0]
    assert (r.subject, r.original_fact, r.edit_fact) == ("BBC One", "BBC One, by BBC", "BBC One, by Sega")


def test_convert_data_cli_default_paths(shared_data, tmp_path):
    """`python convert_data.py` with no arguments reads data/ZSRE_1000.pkl, writes data/zsre_1000.jsonl."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ZSRE_1000.pkl").symlink_to(shared_data / "ZSRE_1000.pkl")
    proc = subprocess.run([sys.executable, str(ROOT / "convert_data.py")], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "kept 986, dropped 14 (nan_answer=8, duplicate=6)" in proc.stderr
    out = load_records(tmp_path / "data" / "zsre_1000.jsonl")
    assert len(out) == 986
    assert set(json.loads((tmp_path / "data" / "zsre_1000.jsonl").read_text().splitlines()[0])) == set(FIELDS)


def test_convert_data_cli_missing_input_says_what_to_do(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "convert_data.py")], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "data/ZSRE_1000.pkl not found" in proc.stderr and "python convert_data.py" in proc.stderr


def test_unknown_layout_names_expected_fields(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"foo": 1, "bar": 2}]))
    with pytest.raises(ValueError) as err:
        convert(path)
    msg = str(err.value)
    assert "unknown edit-data layout" in msg
    for needed in ("src", "alt", "target_new", "ground_truth", "edit_fact"):
        assert needed in msg
    with pytest.raises(ValueError, match="unknown edit-data layout"):
        detect_layout({"subject": "x"})


ROME_ROWS = [  # ROME's own counterfact.json layout (kmeng01/rome), two rows as it writes them
    {"case_id": 0, "pararel_idx": 2796,
     "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                           "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
                           "subject": "Danielle Darrieux"},
     "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
                            "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language"],
     "neighborhood_prompts": ["The mother tongue of L\u00e9on Blum is", "The native language of Montesquieu is"],
     "attribute_prompts": ["J.\u00a0R.\u00a0R. Tolkien is a native speaker of"], "generation_prompts": ["Danielle Darrieux's mother tongue is"]},
    {"case_id": 1, "pararel_idx": 1,
     "requested_rewrite": {"prompt": "{} is a citizen of", "relation_id": "P27", "target_new": {"str": "Japan", "id": "Q17"},
                           "target_true": {"str": "France", "id": "Q142"}, "subject": "Edwin of Northumbria"},
     "paraphrase_prompts": ["Edwin of Northumbria holds a citizenship from"], "neighborhood_prompts": ["Jean Monnet is a citizen of"]},
]


def test_rome_nested_counterfact_layout_converts_and_gives_every_paraphrase_as_a_probe(tmp_path):
    from gflownet.tasks.contradiction.probes import counterfact_rows, paraphrase_probes

    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps(ROME_ROWS))
    records, report, layout = convert(path)
    assert layout == "counterfact_rome" and report.kept == 2
    assert records[0] == EditRecord("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "French", "English",
                                    "The mother tongue of Danielle Darrieux is French",
                                    "The mother tongue of Danielle Darrieux is English")
    assert records[1].prompt == "Edwin of Northumbria is a citizen of" and records[1].edited_answer == "Japan"
    assert paraphrase_probes(path, records) == [ROME_ROWS[0]["paraphrase_prompts"], ROME_ROWS[1]["paraphrase_prompts"]]
    rows = counterfact_rows(path, records)  # edit quality: one paraphrase and one neighbourhood prompt per edit
    assert rows[0]["rephrase_prompt"] == ROME_ROWS[0]["paraphrase_prompts"][0]
    assert (rows[0]["locality_prompt"], rows[0]["locality_ground_truth"]) == ("The mother tongue of L\u00e9on Blum is", "French")
    bad = [dict(ROME_ROWS[0], requested_rewrite={**ROME_ROWS[0]["requested_rewrite"], "prompt": "The mother tongue is"})]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"counterfact.json\[0\]: requested_rewrite.prompt .* has no \{\} where the subject"):
        convert(path)
    path.write_text(json.dumps([ROME_ROWS[0], {"case_id": 3, "subject": "x"}]))
    with pytest.raises(ValueError, match=r"counterfact.json\[1\]: no requested_rewrite"):
        convert(path)


def test_clean_records_drops_and_counts_each_reason():
    rows = [
        row(),
        row(),  # duplicate
        row(subject="  X ", prompt="X  was made\tby"),  # duplicate after whitespace normalisation
        row(edited_answer=float("nan"), edit_fact="X was made by nan"),
        row(edited_answer="nan"),
        row(edited_answer="   "),
        {k: v for k, v in row().items() if k != "edit_fact"},
        row(edited_answer="a", original_answer="A"),  # unchanged (case only)
        row(edit_fact="X was made by A"),  # unchanged fact
        row(subject="Y", original_fact="Y was made by A", edit_fact="Y was made by B"),
    ]
    records, report = clean_records(rows)
    assert [r.subject for r in records] == ["X", "Y"]
    assert records[0].prompt == "X was made by"
    assert dict(report.dropped) == {"duplicate": 2, "nan_answer": 2, "empty_field": 1, "missing_field": 1, "unchanged_edit": 2}
    assert report.total == 10 and report.kept == 2
    assert "kept 2, dropped 8" in report.summary()


def test_example_set_is_valid_and_large_enough():
    records = load_records(EXAMPLE)
    assert len(records) >= 40
    cleaned, report = clean_records([r.to_dict() for r in records])
    assert report.kept == len(records), report.summary()  # nothing to drop in our own data
    assert len({r.subject for r in records}) == len(records)


def test_load_records_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    missing = row()
    del missing["edit_fact"]
    path.write_text(json.dumps(row()) + "\n" + json.dumps(missing) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field\(s\) \['edit_fact'\] missing.*convert_data.py"):
        load_records(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        load_records(path)
    with pytest.raises(FileNotFoundError, match="convert_data.py"):
        load_records(tmp_path / "missing.jsonl")


def test_write_then_load_round_trip(tmp_path):
    recs = [EditRecord(**row()), EditRecord(**row(subject="Z"))]
    write_jsonl(recs, tmp_path / "out.jsonl")
    assert load_records(tmp_path / "out.jsonl") == recs


def test_datamodule_split_is_disjoint_and_seeded():
    dm = EditDataModule(str(EXAMPLE), val_size=8, split_seed=3)
    dm.setup("fit")
    assert len(dm.val_records) == 8 and len(dm.train_records) == len(load_records(EXAMPLE)) - 8
    assert not set(dm.val_records) & set(dm.train_records)
    dm2 = EditDataModule(str(EXAMPLE), val_size=8, split_seed=3)
    dm2.setup("fit")
    assert dm2.val_records == dm.val_records
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, list) and isinstance(batch[0], EditRecord)
    with pytest.raises(ValueError, match="leaves no training records"):
        bad = EditDataModule(str(EXAMPLE), val_size=1000)
        bad.setup("fit")


def test_nan_detection_is_not_fooled_by_words():
    rec, rep = clean_records([row(edited_answer="Nanjing", edit_fact="X was made by Nanjing")])
    assert rep.kept == 1 and not math.isnan(len(rec))


def test_jsonl_with_a_byte_order_mark_is_read_and_a_bad_row_is_named(tmp_path):
    row = {"subject": "Mars", "prompt": "Mars is", "original_answer": "red", "edited_answer": "blue",
           "original_fact": "Mars is red", "edit_fact": "Mars is blue"}
    good = tmp_path / "bom.jsonl"
    good.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode())
    assert load_records(good)[0].subject == "Mars"
    assert convert(good)[0][0].edit_fact == "Mars is blue"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n" + json.dumps([row]) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        convert(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(row) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:3: not valid JSON"):
        convert(broken)


def test_train_and_the_converter_clean_a_jsonl_alike(tmp_path, caplog):
    """train.py's loader (load_records) and convert_data.py apply the same cleaning to the same
    .jsonl: NaN answers, empty fields, edits that change nothing and repeats are dropped and counted
    the same way (train.py used to train on them)."""
    import logging

    rows = [row(), row(subject="Y"), row(subject="Z", edited_answer="nan", edit_fact="X was made by nan"),
            row(subject="W", edited_answer="A", edit_fact="X was made by A"), row(subject="V", original_answer=" "), row()]
    path = tmp_path / "edits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    caplog.set_level(logging.INFO)
    loaded = load_records(path)
    converted, report, _ = convert(path)
    assert loaded == converted and [r.subject for r in loaded] == ["X", "Y"]
    assert dict(report.dropped) == {"nan_answer": 1, "unchanged_edit": 1, "empty_field": 1, "duplicate": 1}
    assert f"{path}: {report.summary()}" in caplog.text  # train.py says what it dropped, in the converter's words
    path.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(ValueError, match=r"no edit records \(1 rows: kept 0, dropped 1 \(nan_answer=1\)\)"):
        load_records(path)


@pytest.mark.parametrize("bad, message", [
    ({"edited_answer": {"text": "B"}}, r":2: field 'edited_answer' is a dict, not text"),
    ({"subject": ["X"]}, r":2: field 'subject' is a list, not text"),
    ({"edit_fact": "X was made by B " + "B" * 2_000_000}, r":2: field 'edit_fact' is 2000016 characters long \(at most 2000\)"),
    ({"edit_fact": "X was made by \x1b[2J B"}, r":2: field 'edit_fact' holds the control character '\\x1b' at position 14"),
])
def test_broken_rows_are_refused_naming_file_line_and_field_in_both_paths(tmp_path, bad, message):
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(row()) + "\n" + json.dumps(row(**bad)) + "\n")
    for load in (load_records, convert):
        with pytest.raises(ValueError, match="edits.jsonl" + message):
            load(path)
    # the command line prints the error, escaped (no raw control characters reach the terminal)
    proc = subprocess.run([sys.executable, str(ROOT / "convert_data.py"), str(path), str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "\x1b" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("content", [b"not a pickle at all", b"\x80\x04\x95", None])
def test_a_bad_pkl_is_a_clear_error_not_a_traceback(tmp_path, content):
    import pickle

    path = tmp_path / "edits.pkl"
    path.write_bytes(content if content is not None else pickle.dumps({"subject": "X"}))
    with pytest.raises(ValueError, match="edits.pkl: (not a readable pandas pickle|the pickle holds a dict)"):
        convert(path)
    proc = subprocess.run([sys.executable, str(ROOT / "convert_data.py"), str(path), str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "edits.pkl" in proc.stderr


def test_bad_jsonl_bytes_duplicate_keys_numbers_pickles_and_arrays_are_refused_naming_where(tmp_path):
    """A bad byte is named by file and line (it was a bare UnicodeDecodeError at a byte offset), a key
    given twice and a number where an edit field's text belongs are refused (both were kept
    silently), and a pickle or a JSON array given as data.path says to convert it first."""
    import pickle

    good = {"subject": "S", "prompt": "S is in", "original_answer": "Paris", "edited_answer": "Rome",
            "original_fact": "S is in Paris.", "edit_fact": "S is in Rome."}
    path = tmp_path / "edits.jsonl"
    cases = [
        ((json.dumps(good) + "\n").encode() * 250 + b'{"subject": "\xff"}\n', r"edits.jsonl:251: not UTF-8 text"),
        (b'{"subject": "A", "subject": "B"}\n', r"edits.jsonl:1: key 'subject' appears twice"),
        ((json.dumps({**good, "edited_answer": 3.5}) + "\n").encode(), r"edits.jsonl:1: field 'edited_answer' is float 3.5, not text"),
        (pickle.dumps([good]), r"is a pickle, not JSON lines: convert it first"),
        (json.dumps([good], indent=1).encode(), r"a JSON array, not one JSON value per line: convert it first"),
        (json.dumps([good]).encode(), r"got a list \(a raw data file\? convert it with convert_data.py\)"),
    ]
    for data, message in cases:
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            load_records(path)
