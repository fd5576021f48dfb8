import numpy as np
import pytest
import torch

from unlearn_utils import evaluate as ev


def test_greedy_match_positions():
    logits = torch.zeros(5, 4)
    logits[2, 3] = 1.0  # position 2 predicts token 3 (the first answer token when prompt_len = 3)
    logits[3, 1] = 1.0
    assert ev.greedy_match(logits, 3, [3, 1])
    assert not ev.greedy_match(logits, 3, [3, 2])
    assert not ev.greedy_match(logits, 2, [3])  # off by one: position 1 predicts token 0, not 3


def test_greedy_match_prompt_len_4():
    logits = torch.zeros(5, 4)
    logits[3, 1] = 1.0
    assert ev.greedy_match(logits, 4, [1])


def test_min_k_by_hand():
    lp = [-0.1, -5.0, -0.3, -2.0, -0.2]
    assert ev.min_k_score(lp, 0.4) == pytest.approx((-5.0 - 2.0) / 2)
    assert ev.min_k_score(lp, 0.01) == pytest.approx(-5.0)


def test_auc_by_hand():
    assert ev.auc([3, 4], [1, 2]) == 1.0
    assert ev.auc([1, 2], [3, 4]) == 0.0
    assert ev.auc([1, 3], [2, 2]) == 0.5
    assert ev.auc([1, 1], [1, 1]) == 0.5  # ties count half
    with pytest.raises(ValueError):
        ev.auc([], [1])


def test_forget_quality():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 200)
    assert ev.forget_quality(a, a) == pytest.approx(1.0)
    assert ev.forget_quality(a, a + 3) < 1e-6


class FixedLM(torch.nn.Module):
    """A 'model' whose next-token distribution is the same table at every position: easy to compute by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.log(torch.tensor(table)))

    def forward(self, input_ids, attention_mask=None):
        class Out:
            pass

        out = Out()
        out.logits = self.table.expand(*input_ids.shape, -1)
        return out


class WordTok:
    """Maps words to ids by a fixed vocabulary (the minimum tokenizer interface the evaluator uses); like Llama's, it
    starts a text with <s> when asked for special tokens."""

    bos_token_id, pad_token_id = 0, 0
    vocab = {"<s>": 0, "a": 1, "b": 2, "c": 3}

    def __call__(self, text, add_special_tokens=True):  # a string, or a list of them (as Hugging Face's)
        if isinstance(text, list):
            return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
        return {"input_ids": [0] * add_special_tokens + [self.vocab[w] for w in text.split()]}


def test_answer_scores_and_truth_ratio_by_hand():
    model, tok = FixedLM([0.1, 0.5, 0.3, 0.1]), WordTok()
    s = ev.answer_scores(model, tok, ["a", "a b"], ["a", "c a"])
    assert s["correct"].tolist() == [True, False]
    assert s["logprob"][0] == pytest.approx(np.log(0.5))
    assert s["prob"][1] == pytest.approx(np.sqrt(0.1 * 0.5))
    data = {"prompt": ["a"], "answer": ["a"], "perturbed": [["b", "c"]]}
    # TOFU's wrong side: the geometric mean of the wrong answers' probabilities; the kit's earlier one: their mean
    assert ev.truth_ratios(model, tok, data)[0] == pytest.approx(np.sqrt(0.3 * 0.1) / 0.5)
    assert ev.truth_ratios(model, tok, data, wrong_mean="arithmetic")[0] == pytest.approx(((0.3 + 0.1) / 2) / 0.5)
    assert ev.perplexity(model, tok, ["a b"]) == pytest.approx(np.exp(-(np.log(0.5) + np.log(0.3)) / 2))
    with pytest.raises(ValueError, match="empty"):
        ev.answer_scores(model, tok, [], [])


def test_batching_does_not_change_scores(knowing):
    """Length-sorted batches and the one-forward truth ratio give the numbers of scoring one question at a time."""
    world, model, tok = knowing
    facts = world.facts("trained", "trained").select(range(0, 400, 7))
    prompts, answers = list(facts["prompt"]), list(facts["answer"])
    batched = ev.answer_scores(model, tok, prompts, answers, batch_size=16)
    alone = ev.answer_scores(model, tok, prompts, answers, batch_size=1)
    assert batched["correct"].tolist() == alone["correct"].tolist()
    np.testing.assert_allclose(batched["logprob"], alone["logprob"], atol=1e-5)
    # the truth ratio from one forward of each prompt against one forward per candidate answer
    fast = ev.truth_ratios(model, tok, facts, batch_size=16)
    true = alone["prob"].to_numpy()
    wrong = np.array([[ev.answer_scores(model, tok, [p], [w], batch_size=1)["prob"][0] for w in ws]
                      for p, ws in zip(prompts, facts["perturbed"])])
    np.testing.assert_allclose(fast, np.exp(np.log(wrong).mean(1)) / true, rtol=1e-4)
    texts = [p + " " + a for p, a in zip(prompts, answers)]
    for a, b in zip(ev.token_logprobs(model, tok, texts, batch_size=16),
                    ev.token_logprobs(model, tok, texts, batch_size=1)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_report_card_on_tiny_model(tiny):
    world, model, tok = tiny
    card = ev.report_card(model, tok, world, "forget05", retain_model=model)
    values = card.set_index("metric")["value"]
    assert set(ev.METRICS) == set(values.index)
    assert values["forget_quality"] == pytest.approx(1.0)  # a model compared with itself
    assert 0 <= values["forget_accuracy"] <= 1 and values["utility_perplexity"] > 1
    assert card["higher_means"].str.len().min() > 5


def test_first_checkpoint_below():
    import pandas as pd
    import pytest

    from unlearn_utils.evaluate import first_checkpoint_below

    log = pd.DataFrame({"step": [0, 1, 20, 40, 60], "forget_accuracy": [1.0, None, 0.3, 0.04, 0.0],
                        "retain_accuracy": [1.0, None, 0.9, 0.8, 0.7]})
    assert first_checkpoint_below(log, 0.05)["step"] == 40
    assert first_checkpoint_below(log, -1)["step"] == 60  # never reached: the last checkpoint
    with pytest.raises(ValueError, match="no evaluated checkpoints"):
        first_checkpoint_below(log.assign(forget_accuracy=None), 0.05)


def test_trajectory_scores_the_same_weights_once(tiny, monkeypatch):
    """Every unlearning run starts from the same original: its step-0 scores are computed once per trajectory."""
    import copy

    world, model, tok = tiny
    traj = ev.trajectory_metrics(tok, ev.eval_data(world, "forget05"))
    calls, real = [], ev.score_pairs
    monkeypatch.setattr(ev, "score_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = traj(model)
    n = len(calls)
    assert n > 0 and traj(copy.deepcopy(model)) == first and len(calls) == n  # same weights: not scored again
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).mul_(0.5)
    traj(other)
    assert len(calls) == 2 * n


# ---- tables and report cards the notebooks build (FixedLM with table A always predicts "a", with B always "c") ----
TABLE_A, TABLE_B = [0.1, 0.5, 0.3, 0.1], [0.1, 0.2, 0.2, 0.5]


def test_accuracy_table_by_group_with_an_all_row():
    import pandas as pd

    model, tok = FixedLM(TABLE_A), WordTok()
    x = {"prompt": ["a", "a", "b"], "answer": ["a", "b", "a"], "attribute": ["city", "city", "pet"]}
    y = {"prompt": ["a"], "answer": ["c"], "attribute": ["pet"]}
    table = ev.accuracy_table(model, tok, {"x": x, "y": y}, by="attribute")
    assert list(table.columns) == ["x", "y"] and list(table.index) == ["city", "pet", "ALL"]
    assert table.loc["city", "x"] == 0.5 and table.loc["pet", "x"] == 1.0 and pd.isna(table.loc["city", "y"])
    assert table.loc["ALL", "x"] == pytest.approx(2 / 3) and table.loc["ALL", "y"] == 0.0
    assert table.loc["ALL", "x"] == ev.accuracy(model, tok, x)


def test_accuracy_on_sets_and_of_models():
    x = {"prompt": ["a", "a", "b"], "answer": ["a", "b", "a"]}
    y = {"prompt": ["a"], "answer": ["c"]}
    on_sets = ev.accuracy_on_sets(FixedLM(TABLE_A), WordTok(), {"forget": x, "retain": y})
    assert on_sets.name == "accuracy" and on_sets.to_dict() == pytest.approx({"forget": 2 / 3, "retain": 0.0})
    of_models = ev.accuracy_of_models({"A": FixedLM(TABLE_A), "B": FixedLM(TABLE_B)}, WordTok(), y)
    assert of_models.name == "accuracy" and of_models.to_dict() == {"A": 0.0, "B": 1.0}


def test_select_metrics_keeps_the_order_asked_and_drops_missing():
    import pandas as pd

    table = pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}, index=["original"])
    assert list(ev.select_metrics(table, ["c", "missing", "a"]).columns) == ["c", "a"]
    assert ev.select_metrics(table, ["c", "a"]).loc["original"].tolist() == [3.0, 1.0]


def _questions(rows, **columns):
    import datasets

    return datasets.Dataset.from_dict({"prompt": [r[0] for r in rows], "answer": [r[1] for r in rows], **columns})


def test_reference_points_skip_missing_models():
    forget = _questions([("a", "a"), ("b", "c")])          # A: 1/2 right, B: 1/2 right ("c")
    retain = _questions([("a", "a"), ("b", "a"), ("c", "b")])  # A: 2/3, B: 0
    data = ev.EvalData(forget=forget, retain=retain)
    points = ev.reference_points({"A": FixedLM(TABLE_A), "retain": None, "B": FixedLM(TABLE_B)}, WordTok(), data)
    assert list(points) == ["A", "B"]
    assert points["A"] == pytest.approx((0.5, 2 / 3)) and points["B"] == pytest.approx((0.5, 0.0))


def test_membership_scores_by_hand():
    data = ev.EvalData(forget=None, retain=None, forget_texts=["a b"], holdout_texts=["c c", "b"])
    members, nonmembers = ev.membership_scores(FixedLM(TABLE_A), WordTok(), data, "min_k")
    # Min-40% of one or two tokens keeps the single lowest log-probability: log P(b) = log 0.3, log P(c) = log 0.1
    assert members.tolist() == pytest.approx([np.log(0.3)])
    assert nonmembers.tolist() == pytest.approx([np.log(0.1), np.log(0.3)])
    assert ev.membership_scores(FixedLM(TABLE_A), WordTok(), ev.EvalData(forget=None, retain=None)) is None


# truth ratios R = P(wrong) / P(true), P(wrong) the geometric mean of the two wrong answers' probabilities
# (TOFU): A = [0.1, 0.5, 0.3, 0.1] gives sqrt(0.5 * 0.1) / 0.3, sqrt(0.3 * 0.1) / 0.5, sqrt(0.5 * 0.3) / 0.1;
# B = [0.1, 0.2, 0.2, 0.5] gives sqrt(0.2 * 0.5) / 0.2 twice, then sqrt(0.2 * 0.2) / 0.5 (three copies each)
R_A = [np.sqrt(0.5 * 0.1) / 0.3, np.sqrt(0.3 * 0.1) / 0.5, np.sqrt(0.5 * 0.3) / 0.1]
R_B = [np.sqrt(0.2 * 0.5) / 0.2, np.sqrt(0.2 * 0.5) / 0.2, np.sqrt(0.2 * 0.2) / 0.5]


def test_report_cards_use_the_retain_models_truth_ratios(monkeypatch):
    rows = [("a", "b"), ("a", "a"), ("a", "c")] * 3
    perturbed = [["a", "c"], ["b", "c"], ["a", "b"]] * 3
    data = ev.EvalData(forget=_questions(rows, perturbed=perturbed), retain=_questions([("a", "a")]))
    original, retain, other = FixedLM(TABLE_A), FixedLM(TABLE_B), FixedLM(TABLE_A)
    tok = WordTok()
    np.testing.assert_allclose(ev.truth_ratios(original, tok, data.forget), R_A * 3, rtol=1e-5)
    np.testing.assert_allclose(ev.truth_ratios(retain, tok, data.forget), R_B * 3, rtol=1e-5)
    calls, real = [], ev.truth_ratios
    monkeypatch.setattr(ev, "truth_ratios", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    cards = ev.report_cards(original, tok, data, retain, {"method": other})
    assert list(cards) == ["original", "retain model", "method"]
    assert calls.count(retain) == 2  # once for everyone's forget quality, once for its own card's truth ratio
    values = ev.compare(cards)
    expected = ev.forget_quality(real(original, tok, data.forget), real(retain, tok, data.forget))
    assert expected < 0.99  # the two models' truth ratios differ
    assert values.loc["original", "forget_quality"] == pytest.approx(expected)
    assert values.loc["method", "forget_quality"] == pytest.approx(expected)
    assert values.loc["retain model", "forget_quality"] == pytest.approx(1.0)
    assert values.loc["original", "forget_accuracy"] == pytest.approx(1 / 3)
    # TOFU's forget-set form, mean min(R, 1/R): R_A = 0.745, 0.346, 3.873 -> 0.745, 0.346, 1 / 3.873
    assert values.loc["original", "forget_truth_ratio"] == pytest.approx(
        (R_A[0] + R_A[1] + 1 / R_A[2]) / 3, rel=1e-5)
    old_form = ev.compare(ev.report_cards(original, tok, data, retain, truth_ratio_form="true_better"))
    assert old_form.loc["original", "forget_truth_ratio"] == pytest.approx(  # mean max(0, 1 - R)
        ((1 - R_A[0]) + (1 - R_A[1]) + 0) / 3, rel=1e-5)
    assert old_form.loc["original", "forget_quality"] == pytest.approx(expected)  # the form changes no ratio
    # no retain model: no forget quality, and no retain row
    alone = ev.report_cards(original, tok, data, None, {"method": other})
    assert list(alone) == ["original", "method"] and "forget_quality" not in ev.compare(alone)
    # no wrong answers: no truth ratios at all, not even the retain model's
    plain = ev.EvalData(forget=_questions(rows), retain=_questions([("a", "a")]))
    calls.clear()
    assert "forget_quality" not in ev.compare(ev.report_cards(original, tok, plain, retain)) and not calls


def test_an_answer_without_tokens_is_refused_naming_its_row(tiny):
    """An empty answer (or one that tokenizes to nothing, such as spaces) once crashed scoring with an index error."""
    import re

    from unlearn_utils.data import encode_qa

    world, model, tok = tiny
    rows = [r for r in world.fact_rows() if r["is_question"]][:3]
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    assert len(ev.answer_scores(model, tok, prompts, answers)) == 3
    for empty in ("", "   "):
        bad = answers[:1] + [empty] + answers[2:]
        with pytest.raises(ValueError, match=re.escape(f"Row 1 (prompt {prompts[1]!r}): its answer {empty!r} "
                                                       "tokenizes to nothing")):
            ev.answer_scores(model, tok, prompts, bad)
        with pytest.raises(ValueError, match="Row 1 "):
            ev.accuracy(model, tok, {"prompt": prompts, "answer": bad})
        with pytest.raises(ValueError, match="Row 1 .*tokenizes to nothing"):
            ev.score_pairs(model, tok, encode_qa(tok, prompts, bad))
    with pytest.raises(ValueError, match=r"Row 0 .*\(3 such rows: \[0, 1, 2\]\)"):
        ev.answer_scores(model, tok, prompts, ["", " ", ""])


# ---- the benchmarks' conventions, each against numbers computed by hand ----
def test_truth_ratio_uses_the_paraphrased_answer_and_the_geometric_mean_by_hand():
    """TOFU's truth ratio: P = exp(-mean token loss) per answer; the wrong side the geometric mean of the wrong
    answers' P; the true side the paraphrased answer where the data has one."""
    model, tok = FixedLM(TABLE_A), WordTok()  # P(<s>) 0.1, P(a) 0.5, P(b) 0.3, P(c) 0.1 at every position
    data = {"prompt": ["a"], "answer": ["a"], "paraphrased_answer": ["a b"], "perturbed": [["b", "c c"]]}
    p_para = np.sqrt(0.5 * 0.3)        # "a b": per-token (geometric) probability
    p_b, p_cc = 0.3, np.sqrt(0.1 * 0.1)  # the wrong answers "b" and "c c"
    assert ev.truth_ratios(model, tok, data)[0] == pytest.approx(np.sqrt(p_b * p_cc) / p_para)
    assert ev.truth_ratios(model, tok, data, true_answer="answer")[0] == pytest.approx(np.sqrt(p_b * p_cc) / 0.5)
    assert ev.truth_ratios(model, tok, data, wrong_mean="arithmetic")[0] == pytest.approx(((p_b + p_cc) / 2) / p_para)
    assert ev.truth_ratios(model, tok, data, 128, "arithmetic", "answer")[0] == pytest.approx(
        ((p_b + p_cc) / 2) / 0.5)
    with pytest.raises(ValueError, match="wrong_mean"):
        ev.truth_ratios(model, tok, data, wrong_mean="harmonic")
    with pytest.raises(ValueError, match="true_answer"):
        ev.truth_ratios(model, tok, data, true_answer="paraphrase")


def test_truth_ratio_forms_by_hand():
    r = [0.5, 2.0, 1.0, 0.25]
    # TOFU's forget form: min(R, 1/R) = 0.5, 0.5, 1, 0.25; the retain form: max(0, 1 - R) = 0.5, 0, 0, 0.75
    assert ev.truth_ratio_score(r) == pytest.approx((0.5 + 0.5 + 1 + 0.25) / 4)
    assert ev.truth_ratio_score(r, "closer_to_1") == pytest.approx(0.5625)
    assert ev.truth_ratio_score(r, "true_better") == pytest.approx((0.5 + 0 + 0 + 0.75) / 4)
    assert ev.truth_ratio_score([0.0, np.inf], "closer_to_1") == 0.0  # under- and overflowed ratios read as 0
    with pytest.raises(ValueError, match="truth-ratio form"):
        ev.truth_ratio_score(r, "tofu_forget")
    # both forms side by side, one column per model: A prefers "a", B "c"
    rows = [("a", "b"), ("a", "a"), ("a", "c")]
    data = _questions(rows, perturbed=[["a", "c"], ["b", "c"], ["a", "b"]])
    table = ev.truth_ratio_forms({"A": FixedLM(TABLE_A), "B": FixedLM(TABLE_B)}, WordTok(), data)
    assert list(table.index) == ["closer_to_1", "true_better"] and list(table.columns) == ["A", "B", "formula",
                                                                                          "reads"]
    assert table.loc["closer_to_1", "A"] == pytest.approx((R_A[0] + R_A[1] + 1 / R_A[2]) / 3, rel=1e-5)
    assert table.loc["true_better", "A"] == pytest.approx((1 - R_A[0] + 1 - R_A[1]) / 3, rel=1e-5)
    assert table.loc["closer_to_1", "B"] == pytest.approx((1 / R_B[0] + 1 / R_B[1] + R_B[2]) / 3, rel=1e-5)
    assert table.loc["true_better", "B"] == pytest.approx((1 - R_B[2]) / 3, rel=1e-5)
    assert table.loc["closer_to_1", "formula"] == "mean min(R, 1/R)"
    one = ev.truth_ratio_forms(FixedLM(TABLE_A), WordTok(), data)
    assert list(one.columns)[0] == "model" and one.loc["true_better", "model"] == table.loc["true_better", "A"]


def test_forget_quality_by_hand_and_on_inverted_ratios():
    # two samples of two, all of one below all of the other: KS statistic 1; the exact two-sided p-value is the
    # share of the C(4, 2) = 6 orderings that separate them as completely: 2 / 6
    assert ev.forget_quality([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1 / 3)
    # TOFU tests 1/R; the KS test compares ranks, so R gives the same p-value
    assert ev.forget_quality([1 / 1.0, 1 / 2.0], [1 / 3.0, 1 / 4.0]) == pytest.approx(1 / 3)


def test_read_truth_ratios_from_a_list_and_from_tofus_log(tmp_path):
    import json

    listed = tmp_path / "ratios.json"
    listed.write_text(json.dumps([0.5, 1.25]))
    assert ev.read_truth_ratios(listed).tolist() == [0.5, 1.25]
    log = tmp_path / "eval_log_forget.json"  # TOFU's layout: per question, mean token losses
    log.write_text(json.dumps({"avg_paraphrased_loss": {"1": 2.0, "0": 1.0},
                               "average_perturb_loss": {"0": [1.5, 2.5], "1": [2.0, 2.0]}}))
    # R = exp(loss of the paraphrase - mean loss of the wrong answers): exp(1 - 2), exp(2 - 2), in key order
    np.testing.assert_allclose(ev.read_truth_ratios(log), [np.exp(-1.0), 1.0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([0.5, -1.0]))
    with pytest.raises(ValueError, match="positive"):
        ev.read_truth_ratios(bad)
    bad.write_text(json.dumps({"Truth Ratio": 0.6}))
    with pytest.raises(ValueError, match="neither a list"):
        ev.read_truth_ratios(bad)


def test_zlib_and_min_k_conventions_by_hand():
    import zlib

    model, tok = FixedLM(TABLE_A), WordTok()
    # "a b": the token log-probabilities after the first token are log P(a) = log 0.5 and log P(b) = log 0.3
    lp = np.array([np.log(0.5), np.log(0.3)])
    size = len(zlib.compress(b"a b"))
    scores = ev.mia_scores(model, tok, ["a b"])
    assert scores["zlib"][0] == pytest.approx(lp.mean() / size)    # mean NLL / zlib size (Carlini et al., MUSE)
    assert ev.mia_scores(model, tok, ["a b"], zlib_nll="total")["zlib"][0] == pytest.approx(lp.sum() / size)
    assert scores["loss"][0] == pytest.approx(lp.mean())
    # Min-K%: open-unlearning takes max(1, floor(k n)) tokens, the kit's earlier rule round(k n)
    four = [-0.1, -5.0, -0.3, -2.0]  # k n = 1.6
    assert ev.min_k_score(four, 0.4) == pytest.approx(-5.0)
    assert ev.min_k_score(four, 0.4, count="round") == pytest.approx((-5.0 - 2.0) / 2)
    assert ev.min_k_count(2, 0.4) == 1 and ev.min_k_count(2, 0.4, "round") == 1   # 0.8: at least one token
    assert ev.min_k_count(100, 0.29) == 29 and int(0.29 * 100) == 28  # k n exactly, not 28.999... of floats
    assert ev.min_k_count(5, 0.5, "round") == 2  # 2.5: Python's rounding, half to even, as before
    with pytest.raises(ValueError, match="count"):
        ev.min_k_score(four, 0.4, count="ceil")
    with pytest.raises(ValueError, match="zlib_nll"):
        ev.mia_scores(model, tok, ["a b"], zlib_nll="sum")
