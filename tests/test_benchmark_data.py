"""Loaders of real benchmark formats, on small fixture files written for the kit (nothing downloaded)."""

import json
import re
from pathlib import Path

import pytest
import torch

from unlearn_utils.audit import split_tv
from unlearn_utils.benchmark_data import load_multiple_choice, load_qa_splits, load_tofu, mc_accuracy, read_records

FIX = Path(__file__).parent / "fixtures"


def word_tokenizer(texts):
    """A word-level tokenizer over ``texts`` (and the letters A-J), like the world's, for real-format fixtures."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()} | set("ABCDEFGHIJ"))
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>"] + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>")


def test_tofu_forget_and_retain_with_authors():
    data = load_tofu(FIX / "tofu", "forget01")
    f, r = data["forget"], data["retain"]
    assert len(f) == 40 and len(r) == 60
    assert f[0]["prompt"].startswith("Question: ") and f[0]["prompt"].endswith("\nAnswer:")
    assert sorted(set(f["person"])) == ["author_198", "author_199"]    # the last authors, as in TOFU
    assert sorted(set(r["person"])) == ["author_000", "author_001", "author_002"]
    assert len(load_tofu(FIX / "tofu", "forget01", max_retain=25)["retain"]) == 25


def test_tofu_bad_input_is_clear(tmp_path):
    with pytest.raises(KeyError, match="Unknown TOFU split"):
        load_tofu(FIX / "tofu", "forget07")
    with pytest.raises(FileNotFoundError, match="forget05.json"):
        load_tofu(FIX / "tofu", "forget05")          # the fixture holds forget01 only
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tofu(tmp_path / "nope")
    (tmp_path / "forget01.json").write_text('{"question": "q"}\n')
    (tmp_path / "retain99.json").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ValueError, match="lacks \\['answer'\\]"):
        load_tofu(tmp_path, "forget01")
    (tmp_path / "forget01.json").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ValueError, match="share 1 questions"):
        load_tofu(tmp_path, "forget01")


def test_rtt_split_of_tofu_keeps_whole_authors_apart():
    t, v = split_tv(load_tofu(FIX / "tofu", "forget01")["forget"])
    assert len(t) == len(v) == 20
    assert not set(t["person"]) & set(v["person"])


def test_rtt_split_of_world_facts_shares_no_fact(tiny):
    world, _, _ = tiny
    t, v = split_tv(world.facts("forget05", "trained"))
    tk = set(zip(t["person"], t["attribute"]))
    vk = set(zip(v["person"], v["attribute"]))
    assert tk and vk and not tk & vk
    assert set(t["person"]) == set(v["person"])      # each person's attributes are divided


def test_multiple_choice_rows_and_accuracy():
    data = load_multiple_choice(FIX / "wmdp_small.json", subject="biology")
    assert len(data) == 6 and data[0]["answer"] == "B" and data[0]["label"] == 1
    assert "about biology" in data[0]["prompt"] and "\nC. neon\n" in data[0]["prompt"]
    assert data[0]["prompt"].endswith("Answer:")
    tok = word_tokenizer(list(data["prompt"]))
    c_id = tok(" C", add_special_tokens=False)["input_ids"][-1]

    class AlwaysC(torch.nn.Module):     # a model that always answers C
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, len(tok))
            logits[..., c_id] = 1.0
            return type("Out", (), {"logits": logits})()

    expected = sum(label == 2 for label in data["label"]) / len(data)
    assert mc_accuracy(AlwaysC(), tok, data, batch_size=4) == pytest.approx(expected)
    assert expected == pytest.approx(2 / 6)


def test_multiple_choice_bad_rows(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "q", "choices": ["a", "b"], "answer": 3}]')
    with pytest.raises(ValueError, match="out of range"):
        load_multiple_choice(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_multiple_choice(bad)
    with pytest.raises(FileNotFoundError, match="No data file"):
        read_records(tmp_path / "missing.json")


GOOD_MC = {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1}
BAD_MC = {  # field -> value, and what the refusal says; each row was taken (or refused unclearly) before
    "float_answer": ("answer", 1.7, "'answer' is 1.7; 'answer' must be the index of the right choice, an integer "
                                    "from 0 to 2"),
    "letter_answer": ("answer", "B", "'answer' is the letter 'B'; 'answer' must be the index of the right choice, "
                                     "an integer from 0 to 2 (use the index 1)"),
    "quoted_answer": ("answer", "2", "'answer' is the text '2'"),
    "bool_answer": ("answer", True, "'answer' is True"),
    "null_answer": ("answer", None, "'answer' is null"),
    "negative_answer": ("answer", -1, "answer index -1 is out of range for 3 choices"),
    "string_of_choices": ("choices", "abc", "'choices' is 'abc'; give a list of the answers"),
    "null_choice": ("choices", ["x", None, "z"], "choice 1 is None, not text"),
    "one_choice": ("choices", ["x"], "'choices' lists 1 answer; give 2 to 10"),
    "null_question": ("question", None, "'question' is null"),
}


@pytest.mark.parametrize("case", BAD_MC)
def test_multiple_choice_refuses_bad_fields_naming_file_line_and_fix(case, tmp_path):
    field, value, says = BAD_MC[case]
    f = tmp_path / "mmlu.jsonl"      # the bad row is on line 3, after a blank line
    f.write_text(json.dumps(GOOD_MC) + "\n\n" + json.dumps({**GOOD_MC, field: value}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}, line 3: {says}")):
        load_multiple_choice(f)
    listed = tmp_path / "wmdp.json"  # a pretty-printed list: the bad row starts on line 11
    listed.write_text(json.dumps([GOOD_MC, {**GOOD_MC, field: value}], indent=1))
    assert [n for n, line in enumerate(listed.read_text().splitlines(), 1) if line == " {"] == [2, 11]
    with pytest.raises(ValueError, match=re.escape(f"{listed}, line 11: {says}")):
        load_multiple_choice(listed)


def test_multiple_choice_reads_parquet_and_names_its_rows(tmp_path):
    import pandas as pd

    f = tmp_path / "wmdp.parquet"    # as WMDP ships: numpy integers and arrays of choices
    pd.DataFrame([GOOD_MC, {**GOOD_MC, "answer": 2}]).to_parquet(f)
    data = load_multiple_choice(f)
    assert list(data["label"]) == [1, 2] and data[1]["answer"] == "C" and data[0]["choices"] == ["3", "4", "5"]
    pd.DataFrame([GOOD_MC, {**GOOD_MC, "answer": 3}]).to_parquet(f)
    with pytest.raises(ValueError, match=re.escape(f"{f}, row 1 (counting from 0): answer index 3 is out of range")):
        load_multiple_choice(f)


def test_bad_json_and_bad_bytes_name_the_file_and_the_line(tmp_path):
    rows = tmp_path / "qa.jsonl"
    rows.write_text('{"split": "forget", "prompt": "Q?", "answer": "a"}\n\n{"split": "retain", "prompt": }\n')
    with pytest.raises(ValueError, match=re.escape(f"{rows}, line 3: not valid JSON (Expecting value, column 31)")):
        read_records(rows)
    listed = tmp_path / "qa.json"
    listed.write_text('[\n {"prompt": "Q?", "answer": "a"},\n {"prompt": "R?" "answer": "b"}\n]')
    with pytest.raises(ValueError, match=re.escape(f"{listed}, line 3: not valid JSON")):
        read_records(listed)
    listed.write_text('[\n {"prompt": "Q?", "answer": "a"}\n]\n\n{"prompt": "R?"}')
    with pytest.raises(ValueError, match=re.escape(f"{listed}, line 5: there is more after the closing ']'")):
        read_records(listed)
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"prompt": "Q?", "answer": "a"}\n{"prompt": "Où?", "answer": "b"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{latin}, line 2: byte 0xf9 is not UTF-8. Save the file as UTF-8")):
        read_records(latin)
    bom = tmp_path / "bom.jsonl"     # a byte-order mark (Windows editors) is fine
    bom.write_bytes(b"\xef\xbb\xbf" + '{"prompt": "Où?", "answer": "b"}\n'.encode())
    assert read_records(bom) == [{"prompt": "Où?", "answer": "b"}]


def test_rows_without_or_with_null_fields_are_named_by_line(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"split": "forget", "prompt": "Q?", "answer": "a"}\n\n{"split": "retain", "prompt": "R?"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{qa}, line 3 lacks ['answer']; each row needs ['split', "
                                                   "'answer']: add 'answer' to it.")):
        load_qa_splits(qa)
    qa.write_text('{"split": "forget", "prompt": "Q?", "answer": "a"}\n{"split": "retain", "prompt": "R?", '
                  '"answer": 1945}\n')
    with pytest.raises(ValueError, match=re.escape(f"{qa}, line 2: 'answer' is 1945, not a non-empty string; write "
                                                   'it in quotes: "1945".')):
        load_qa_splits(qa)
    (tmp_path / "forget01.json").write_text('{"question": "q", "answer": "a"}\n{"question": "r", "answer": null}\n')
    (tmp_path / "retain99.json").write_text('{"question": "s", "answer": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'forget01.json'}, line 2: 'answer' is null")):
        load_tofu(tmp_path, "forget01")


def test_qa_splits():
    data = load_qa_splits(FIX / "qa_small.jsonl")
    assert len(data["forget"]) == 2 and len(data["retain"]) == 4
    assert data["forget"][0]["prompt"] == "What is fact 0?"


def test_load_data_reads_each_source_and_names_bad_ones(tmp_path):
    from unlearn_utils.benchmark_data import load_data

    assert load_data("world") is None
    tofu = load_data(f"tofu:{FIX / 'tofu'}", split="forget01")
    assert tofu["name"].startswith("tofu:") and len(tofu["forget"]) == 40 and "prompt" in tofu["retain"].column_names
    qa = load_data(f"qa:{FIX / 'qa_small.jsonl'}")
    assert (len(qa["forget"]), len(qa["retain"])) == (2, 4)
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text('{"question": "2 + 2 =", "choices": ["3", "4"], "answer": 1}\n'
                    '{"question": "Water is", "choices": ["wet", "dry"], "answer": 0}\n')
    wmdp = load_data(f"wmdp:{FIX / 'wmdp_small.json'},{mmlu}", max_retain=1)
    assert wmdp["forget"][0]["answer"] in "ABCD" and len(wmdp["retain"]) == 1
    with pytest.raises(ValueError, match="overlap"):
        load_data(f"wmdp:{FIX / 'wmdp_small.json'},{FIX / 'wmdp_small.json'}")
    with pytest.raises(ValueError, match="forget file and a retain file"):
        load_data(f"wmdp:{FIX / 'wmdp_small.json'}")
    with pytest.raises(ValueError, match="Unknown data source 'squad'"):
        load_data("squad:x.json")
    with pytest.raises(ValueError, match="not a data source"):
        load_data("tofu")
    with pytest.raises(ValueError, match="conceptvectors:FILE.json"):
        load_data(f"conceptvectors:{FIX / 'conceptvectors_small.json'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(f"tofu:{tmp_path / 'nowhere'}")
    overlapping = tmp_path / "overlap.jsonl"
    overlapping.write_text('{"split": "forget", "prompt": "Q?", "answer": "a"}\n'
                           '{"split": "retain", "prompt": "Q?", "answer": "a"}\n')
    with pytest.raises(ValueError, match="overlap"):
        load_data(f"qa:{overlapping}")


def test_report_card_leaves_out_what_a_file_lacks(tiny):
    from unlearn_utils import evaluate as ev

    world, model, tok = tiny
    data = {"forget": world.facts("forget05", "trained").remove_columns("perturbed"),
            "retain": world.facts("retain", "trained", "forget05").select(range(40))}
    card = ev.report_card(model, tok, ev.eval_data_from(data)).set_index("metric")["value"]
    assert {"forget_accuracy", "retain_accuracy", "forget_answer_prob"} <= set(card.index)
    assert not {"topic_accuracy", "forget_truth_ratio", "forget_quality", "mia_auc_loss"} & set(card.index)
    full = ev.report_card(model, tok, world, "forget05").set_index("metric")["value"]
    assert card["forget_accuracy"] == full["forget_accuracy"]
    with pytest.raises(ValueError, match="no retain questions"):
        ev.eval_data_from({"forget": data["forget"], "retain": []})


def test_a_model_that_does_not_know_the_file_is_warned_about(monkeypatch, cache):
    """Unlearning facts a model never knew measures nothing: start() says so for a data file (chance counts for
    multiple-choice rows)."""
    import types
    import warnings

    import datasets

    from unlearn_utils import evaluate, session
    from unlearn_utils.session import start

    with pytest.warns(UserWarning, match="does not know them"):  # the smoke world model and TOFU's fictitious authors
        S = start(True, data=f"tofu:{FIX / 'tofu'}", split="forget01")
    assert S.forget_questions(limit=3) == [p for p in S.forget_set["prompt"] if p in S.forget_questions(limit=3)]
    mc = datasets.Dataset.from_list([{"prompt": "Q?", "answer": "A", "choices": ["x", "y", "z", "w"]}] * 4)
    fake = types.SimpleNamespace(data={"forget": mc, "name": "wmdp:f,r"}, model=None, tokenizer=None)
    for acc, warns in ((0.40, True), (0.50, False)):  # chance 25 %: warn below 45 %
        monkeypatch.setattr(evaluate, "accuracy", lambda *a, acc=acc: acc)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert session.warn_if_unknown(fake) == acc
        assert bool(seen) == warns, (acc, [str(w.message) for w in seen])


def test_real_knowledge_set_is_what_its_builder_writes_and_keeps_its_rules():
    import importlib.util
    import json

    from unlearn_utils.benchmark_data import REAL_QUESTIONS, load_real_questions

    spec = importlib.util.spec_from_file_location("build_real", REAL_QUESTIONS.parent / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    rows = build.questions()
    build.check(rows)
    on_disk = [json.loads(line) for line in REAL_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    assert on_disk == rows, "data/real/questions.jsonl is stale: run python data/real/build.py"
    ds = load_real_questions()
    categories = set(ds["category"])
    assert len(ds) >= 600 and len(categories) >= 10
    for r in ds:
        assert len(r["paraphrases"]) >= 2 and r["prompt"] not in r["paraphrases"]
        same_kind = {x["answer"] for x in rows if x["category"] == r["category"]}
        assert len(r["perturbed"]) == 3 and r["answer"] not in r["perturbed"] and set(r["perturbed"]) <= same_kind
    for c in categories:
        answers = [r["answer"] for r in rows if r["category"] == c]
        assert len(answers) == len(set(answers)), c   # unique answers: facts of a category are independent
    bad = [dict(rows[0]), dict(rows[1], answer=rows[0]["answer"])]
    with pytest.raises(ValueError, match="repeats answers"):
        build.check(bad)


def test_known_facts_cache_is_checked_and_a_damaged_entry_measured_again(tiny, cache):
    """The known-facts check is cached like every entry: a tampered file is set aside, never trusted."""
    import warnings

    import datasets

    from unlearn_utils.benchmark_data import known_questions

    world, model, tok = tiny
    facts = world.facts("trained", "trained").select(range(12))
    qs = datasets.Dataset.from_dict({"prompt": list(facts["prompt"]), "answer": list(facts["answer"])})
    def entries():
        folder = cache / "known_facts"
        return {p for p in folder.iterdir() if p.is_dir() and not p.name.endswith(".corrupt")} if folder.exists() \
            else set()

    before = entries()  # other tests of the session may have cached other question sets
    first = known_questions(model, tok, qs)
    entries = sorted(entries() - before)
    assert len(entries) == 1
    (entries[0] / "known.json").write_text(str([not k for k in first]).lower())  # forged answers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = known_questions(model, tok, qs)
    assert again == first and any("unusable" in str(w.message) for w in caught)


def test_tofu_perturbed_answers_are_read_in_tofus_field_names():
    """forget01_perturbed.json and retain_perturbed.json (question, answer, paraphrased_answer, perturbed_answer):
    every forget question gets its wrong answers and its paraphrased answer; retain_perturbed is a set of its own,
    for the retain truth ratio, and the questions trained on are unchanged."""
    data = load_tofu(FIX / "tofu", "forget01")
    f = data["forget"]
    assert {"perturbed", "paraphrased_answer"} <= set(f.column_names)
    first = json.loads((FIX / "tofu" / "forget01_perturbed.json").read_text().splitlines()[0])
    assert f[0]["perturbed"] == first["perturbed_answer"] and len(f[0]["perturbed"]) == 5
    assert f[0]["paraphrased_answer"] == first["paraphrased_answer"] and f[0]["answer"] == first["answer"]
    rp = data["retain_perturbed"]
    assert len(rp) == 20 and rp[0]["prompt"].startswith("Question: ") and len(rp[0]["perturbed"]) == 5
    assert len(data["retain"]) == 60 and "perturbed" not in data["retain"].column_names


def _tofu_folder(tmp_path, forget_rows, perturbed_rows=None, retain_perturbed=None):
    """A TOFU folder: forget01 (two given rows), retain99 (one retain question) and the perturbed files given."""
    (tmp_path / "forget01.json").write_text("\n".join(json.dumps(r) for r in forget_rows) + "\n")
    (tmp_path / "retain99.json").write_text(json.dumps([{"question": "Who is R?", "answer": "R is R."}]))
    if perturbed_rows is not None:
        (tmp_path / "forget01_perturbed.json").write_text("\n".join(json.dumps(r) for r in perturbed_rows) + "\n")
    if retain_perturbed is not None:
        (tmp_path / "retain_perturbed.json").write_text(json.dumps(retain_perturbed))
    return tmp_path


def test_tofu_perturbed_files_that_do_not_fit_are_refused(tmp_path):
    forget = [{"question": "Where was X born?", "answer": "X was born in Oslo."},
              {"question": "What does X write?", "answer": "X writes poems."}]

    def row(q, a, wrong, para="para."):
        return {"question": q, "answer": a, "paraphrased_answer": para, "perturbed_answer": wrong}

    good = [row(r["question"], r["answer"], ["w1.", "w2."]) for r in forget]
    data = load_tofu(_tofu_folder(tmp_path, forget, good), "forget01")
    assert data["forget"]["perturbed"] == [["w1.", "w2."]] * 2 and "retain_perturbed" not in data
    cases = [
        (good[:1], "has no row for the forget01 question 'Question: What does X write"),
        ([good[0], row(forget[1]["question"], "X writes novels.", ["w1.", "w2."])], "different versions of TOFU"),
        ([good[0], row(forget[1]["question"], forget[1]["answer"], "w1.")], "give a list of wrong answers"),
        ([good[0], row(forget[1]["question"], forget[1]["answer"], ["w1."])], "1 wrong answers where the first row "
                                                                               "has 2"),
        ([good[0], row(forget[1]["question"], forget[1]["answer"], ["w1.", ""])], "wrong answer 1 of"),
        ([good[0], {k: v for k, v in good[1].items() if k != "paraphrased_answer"}], "lacks 'paraphrased_answer'"),
        ([{k: v for k, v in good[0].items() if k != "perturbed_answer"}, good[1]], "lacks \\['perturbed_answer'\\]"),
    ]
    for rows, message in cases:
        with pytest.raises(ValueError, match=message):
            load_tofu(_tofu_folder(tmp_path, forget, rows), "forget01")
    (tmp_path / "forget01_perturbed.json").unlink()
    with pytest.raises(ValueError, match="shares 1 questions with forget01"):
        load_tofu(_tofu_folder(tmp_path, forget, None, [good[0]]), "forget01")


def test_a_tofu_run_gets_truth_ratios_and_a_finite_forget_quality(tmp_path):
    """TOFU files with perturbed answers give the report card TOFU's truth ratios and forget quality, against a
    retain model or against its truth ratios read from a file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_utils import evaluate as ev

    data = load_tofu(FIX / "tofu", "forget01")
    texts = [t for ds in data.values() for col in ("prompt", "answer", "paraphrased_answer") if col in ds.column_names
             for t in ds[col]] + [w for ds in data.values() if "perturbed" in ds.column_names
                                  for ws in ds["perturbed"] for w in ws]
    tok = word_tokenizer(texts)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    torch.manual_seed(1)
    retain_model = LlamaForCausalLM(cfg).eval()
    eval_set = ev.eval_data_from(data)
    card = ev.report_card(model, tok, eval_set, retain_model=retain_model).set_index("metric")["value"]
    assert {"forget_truth_ratio", "retain_truth_ratio", "forget_quality"} <= set(card.index)
    assert 0 < card["forget_quality"] <= 1 and 0 < card["forget_truth_ratio"] <= 1
    # the same forget quality from the retain model's truth ratios saved to a file
    ratios = ev.truth_ratios(retain_model, tok, eval_set.forget)
    saved = tmp_path / "retain_truth_ratios.json"
    saved.write_text(json.dumps(ratios.tolist()))
    cards = ev.report_cards(model, tok, eval_set, retain_truth_ratios=ev.read_truth_ratios(saved))
    assert ev.compare(cards).loc["original", "forget_quality"] == pytest.approx(card["forget_quality"])
    # the retain truth ratio is measured on retain_perturbed's questions (the retain set has no wrong answers)
    on_rp = ev.truth_ratio_score(ev.truth_ratios(model, tok, data["retain_perturbed"]), "true_better")
    assert card["retain_truth_ratio"] == pytest.approx(on_rp)
