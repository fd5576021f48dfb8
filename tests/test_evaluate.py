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
    assert ev.truth_ratios(model, tok, data)[0] == pytest.approx(((0.3 + 0.1) / 2) / 0.5)
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
    np.testing.assert_allclose(fast, wrong.mean(1) / true, rtol=1e-4)
    texts = [p + " " + a for p, a in zip(prompts, answers)]
    for a, b in zip(ev.token_logprobs(model, tok, texts, batch_size=16), ev.token_logprobs(model, tok, texts, batch_size=1)):
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
