"""The report card: how much a model knows, how well it works, and whether it still looks like a member.

Everything is computed with teacher forcing in batched forward passes:

* an answer counts as **correct** when greedy decoding would produce exactly its tokens after the prompt
  (every answer token is the arg-max given the prompt and the answer tokens before it);
* **answer probability** is P(answer | prompt), length-normalised (geometric mean per token);
* **truth ratio** compares the true answer with wrong ("perturbed") answers, in TOFU's and open-unlearning's
  convention (:func:`truth_ratios`, :func:`truth_ratio_score`);
* **membership inference** scores (LOSS, zlib, Min-K%, Min-K%++) ask whether a text looks trained-on;
  their AUC between forget and holdout people says whether an attacker can still tell the forget set apart;
* **forget quality** is the p-value of a Kolmogorov-Smirnov test between this model's and the retain
  model's truth ratios on the forget set (TOFU): high means "indistinguishable from never trained on it".

Conventions. Where a benchmark defines a metric, the kit follows it by default and names it in the function's
docstring; the kit's earlier form stays available as an option where the difference teaches something:

================== ================================================ ==============================================
metric             default (the benchmark's)                        option (the kit's earlier form)
================== ================================================ ==============================================
truth ratio R      P(wrong) / P(true), the wrong answers' P their   ``wrong_mean="arithmetic"`` (mean of the
                   geometric mean exp(-mean of their mean token     wrong answers' probabilities),
                   losses), the true side the paraphrased answer    ``true_answer="answer"``
                   where the data has one (TOFU, open-unlearning)
forget truth ratio mean min(R, 1/R), "closer to 1" (TOFU forget     ``form="true_better"``: mean max(0, 1 - R)
                   set, open-unlearning ``closer_to_1_better``)
retain truth ratio mean max(0, 1 - R), "true better" (TOFU)          (the same in both)
zlib MIA           mean token NLL / zlib size in bytes (Carlini et   ``zlib_nll="total"`` (summed NLL)
                   al. 2021, MUSE, open-unlearning)
Min-K%             the max(1, floor(k n)) lowest tokens              ``count="round"``: max(1, round(k n))
                   (open-unlearning)
================== ================================================ ==============================================
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd
import torch

from . import distributed
from .data import encode_qa, encode_texts, pad_id, weights_fingerprint
from .training import logits_at, pad_batch
from .world import World


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _length_sorted_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Indices in batches of similar length (longest first), so that little of each batch is padding.

    Scores do not depend on which batch a sequence is in; callers put results back at the original indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i: i + size] for i in range(0, len(order), size)]


def _forward_prompts(model, seqs: list[list[int]], prompt_lens: list[int], pad: int, dev,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
    """Float logits [batch, seq, vocab] of right-padded sequences, or [batch, K, vocab] at ``positions`` only
    (:func:`unlearn_utils.training.logits_at`); gated models (GRUN) also get the last prompt position, where they
    apply their edit."""
    batch = pad_batch(seqs, pad)
    extra = {}
    if getattr(model, "uses_prompt_positions", False):
        extra["prompt_positions"] = torch.tensor([n - 1 for n in prompt_lens])
    ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
    if positions is not None:
        return logits_at(model, ids, mask, positions, **extra).float()
    return model(input_ids=ids, attention_mask=mask, **extra).logits.float()


def greedy_match(logits: torch.Tensor, prompt_len: int, answer_ids: list[int]) -> bool:
    """True when greedy decoding after the prompt would write exactly ``answer_ids``.

    logits: [seq, vocab] for the sequence prompt + answer. The logits at position t predict token t+1,
    so the first answer token is predicted at position ``prompt_len - 1``.
    """
    pos = torch.arange(prompt_len - 1, prompt_len - 1 + len(answer_ids), device=logits.device)
    return bool((logits[pos].argmax(-1) == torch.tensor(answer_ids, device=logits.device)).all())


MIN_K_COUNTS = ("floor", "round")


def min_k_count(n: int, k: float, count: str = "floor") -> int:
    """How many of ``n`` token log-probabilities Min-K% averages: ``count="floor"`` (default, open-unlearning's
    convention) takes max(1, floor(k n)); ``"round"`` (the kit's earlier rule, and notebook 00's exercise) takes
    max(1, round(k n)), Python's rounding (half to even). k n is computed exactly from k as written (0.29 x 100 is
    29, not the 28.999... of floating point)."""
    if not 0 < k <= 1:
        raise ValueError(f"Min-K%'s k is a fraction of the tokens in (0, 1], got {k}.")
    exact = Fraction(repr(float(k))) * n
    if count == "floor":
        return max(1, math.floor(exact))
    if count == "round":
        return max(1, round(exact))
    raise ValueError(f"Unknown Min-K% count {count!r}: choose one of {MIN_K_COUNTS}.")


def min_k_score(token_logprobs, k: float = 0.4, count: str = "floor") -> float:
    """Min-K%: the mean of the k fraction lowest token log-probabilities (:func:`min_k_count` of them: by default
    max(1, floor(k n)) as open-unlearning takes them; ``count="round"`` rounds k n instead).

    Training data has few very unlikely tokens, so a higher score suggests a member.
    """
    lp = np.sort(np.asarray(token_logprobs, dtype=float))
    return float(lp[:min_k_count(len(lp), k, count)].mean())


@torch.no_grad()
def answer_scores(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 128) -> pd.DataFrame:
    """Per pair: ``correct`` (greedy match), ``logprob`` (sum over answer tokens), ``n_tokens``, ``prob`` (per token).

    One teacher-forced forward pass per batch; works for any causal LM and tokenizer. An answer that tokenizes to
    nothing (empty, or only spaces) is refused with a ValueError naming its row.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    if not prompts:
        raise ValueError("No questions to score: the prompt list is empty.")
    pairs = encode_qa(tokenizer, prompts, answers)
    _check_answers(pairs, tokenizer, prompts, answers)
    return score_pairs(model, tokenizer, pairs, batch_size)


def _check_answers(pairs, tokenizer, prompts=None, answers=None) -> None:
    """Refuse pairs whose answer has no token (an empty answer, or one the tokenizer turns into nothing, such as
    only spaces): there is nothing to score, and no "correct" or probability means anything. Names the row."""
    empty = [j for j, (_, a) in enumerate(pairs) if len(a) == 0]
    if not empty:
        return
    j = empty[0]
    prompt = prompts[j] if prompts is not None else tokenizer.decode(pairs[j][0])
    what = f"its answer {answers[j]!r}" if answers is not None else "its answer"
    others = f" ({len(empty)} such rows: {empty[:10]}{' ...' if len(empty) > 10 else ''})" if len(empty) > 1 else ""
    raise ValueError(f"Row {j} (prompt {prompt!r}): {what} tokenizes to nothing, so there is no answer token to "
                     f"score{others}. Give every question a non-empty answer, or drop the row.")


@torch.no_grad()
def score_pairs(model, tokenizer, pairs: list[tuple[list[int], list[int]]], batch_size: int = 128,
                logprobs: bool = True) -> pd.DataFrame:
    """:func:`answer_scores` on pairs already encoded by :func:`encode_qa` (encode once, score many checkpoints).

    logprobs=False scores greedy correctness only (``correct`` and ``n_tokens`` columns), skipping the log-softmax.
    An answer without tokens is refused (a ValueError naming its row).
    """
    _check_answers(pairs, tokenizer)
    if distributed.active():  # each process scores its share of the pairs; the rows are gathered in order
        part = _score_pairs(model, tokenizer, distributed.shard_list(list(pairs)), batch_size, logprobs)
        return pd.DataFrame(distributed.gather_list(part.to_dict("records")), columns=part.columns)
    return _score_pairs(model, tokenizer, pairs, batch_size, logprobs)


def _score_pairs(model, tokenizer, pairs, batch_size: int, logprobs: bool) -> pd.DataFrame:
    dev = _device_of(model)
    pad = pad_id(tokenizer)
    n = len(pairs)
    correct, logprob, ntok = [False] * n, [0.0] * n, [0] * n
    for idx in _length_sorted_batches([len(p) + len(a) for p, a in pairs], batch_size):
        chunk = [pairs[j] for j in idx]
        # logits only where an answer token is predicted: positions len(p) - 1 ... len(p) + len(a) - 2 of each row
        width = max(len(a) for _, a in chunk)
        positions = torch.tensor([[len(p) - 1 + k if k < len(a) else 0 for k in range(width)] for p, a in chunk],
                                 dtype=torch.long)
        logits = _forward_prompts(model, [p + a for p, a in chunk], [len(p) for p, _ in chunk], pad, dev, positions)
        logp = logits.log_softmax(-1) if logprobs else None
        greedy = logits.argmax(-1).tolist()  # one arg-max per answer token; the answer is right if greedy writes it
        for i, (j, (p, a)) in enumerate(zip(idx, chunk)):
            correct[j] = greedy[i][:len(a)] == list(a)
            ntok[j] = len(a)
            if logprobs:
                logprob[j] = float(logp[i, torch.arange(len(a)), torch.tensor(a, device=logits.device)].sum())
    if not logprobs:
        return pd.DataFrame({"correct": correct, "n_tokens": ntok})
    df = pd.DataFrame({"correct": correct, "logprob": logprob, "n_tokens": ntok})
    df["prob"] = np.exp(df["logprob"] / df["n_tokens"])
    return df


def accuracy(model, tokenizer, data, batch_size: int = 128) -> float:
    """Share of questions answered exactly by greedy decoding (higher = knows more). ``data`` has prompt/answer."""
    return float(answer_scores(model, tokenizer, list(data["prompt"]), list(data["answer"]),
                               batch_size)["correct"].mean())


def _single_token_candidates(tokenizer, prompts, answers, perturbed):
    """(prompt ids, [true id, wrong ids...]) per question when every candidate answer is a single token after its
    prompt (as on the default world), else None."""
    flat_p = [p for p, ws in zip(prompts, perturbed) for _ in [None, *ws]]
    flat_a = [w for a, ws in zip(answers, perturbed) for w in [a, *ws]]
    pairs = encode_qa(tokenizer, flat_p, flat_a)
    if any(len(a) != 1 for _, a in pairs):
        return None
    k = len(perturbed[0]) + 1
    prompt_ids, candidates = [], []
    for i in range(len(prompts)):
        group = pairs[i * k: (i + 1) * k]
        if any(p != group[0][0] for p, _ in group):
            return None
        prompt_ids.append(group[0][0])
        candidates.append([a[0] for _, a in group])
    return prompt_ids, candidates


def _columns(data) -> list[str]:
    return list(data.column_names) if hasattr(data, "column_names") else list(data)


WRONG_MEANS = ("geometric", "arithmetic")
TRUE_ANSWERS = ("paraphrased", "answer")


def true_answers(data, true_answer: str = "paraphrased") -> list[str]:
    """The answers a truth ratio takes as the truth: TOFU's ``paraphrased_answer`` where the data has that column
    and ``true_answer="paraphrased"`` (the default, as TOFU and open-unlearning score the forget and retain sets),
    else the ``answer`` column (the very answer the model was trained on: ``true_answer="answer"``)."""
    if true_answer not in TRUE_ANSWERS:
        raise ValueError(f"Unknown true_answer {true_answer!r}: choose one of {TRUE_ANSWERS}.")
    column = "paraphrased_answer" if true_answer == "paraphrased" and "paraphrased_answer" in _columns(data) \
        else "answer"
    return list(data[column])


@torch.no_grad()
def answer_logprobs(model, tokenizer, data, batch_size: int = 128, true_answer: str = "paraphrased"):
    """(log P(true), log P(wrong)) per question: length-normalised log-probabilities, i.e. minus the mean token
    loss of each answer after its prompt, of the true answer (:func:`true_answers`) [n] and of each wrong
    (``perturbed``) answer [n, k]. What :func:`truth_ratios` combines."""
    prompts, answers = list(data["prompt"]), true_answers(data, true_answer)
    perturbed = [list(ws) for ws in data["perturbed"]]
    if not perturbed:
        raise ValueError("No questions to score: the data is empty.")
    k = len(perturbed[0])
    if k == 0 or any(len(ws) != k for ws in perturbed):
        raise ValueError("Every question needs the same number (at least one) of perturbed (wrong) answers.")
    single = _single_token_candidates(tokenizer, prompts, answers, perturbed)
    if single is not None:  # one forward of the prompt scores every candidate: its log-prob at the last prompt token
        prompt_ids, candidates = single
        dev = _device_of(model)
        pad = pad_id(tokenizer)
        logp = np.zeros((len(prompts), k + 1))
        for idx in _length_sorted_batches([len(p) for p in prompt_ids], batch_size):
            last = torch.tensor([[len(prompt_ids[j]) - 1] for j in idx])
            logits = _forward_prompts(model, [prompt_ids[j] for j in idx], [len(prompt_ids[j]) for j in idx], pad, dev,
                                      last)
            lp = logits[:, 0].log_softmax(-1)
            cand = torch.tensor([candidates[j] for j in idx], device=logits.device)
            logp[idx] = lp.gather(1, cand).double().cpu().numpy()
        return logp[:, 0], logp[:, 1:]
    true = answer_scores(model, tokenizer, prompts, answers, batch_size)
    flat_p = [p for p, ws in zip(prompts, perturbed) for _ in ws]
    flat_w = [w for ws in perturbed for w in ws]
    wrong = answer_scores(model, tokenizer, flat_p, flat_w, batch_size)
    per_token = lambda df: (df["logprob"] / df["n_tokens"]).to_numpy(dtype=float)  # noqa: E731
    return per_token(true), per_token(wrong).reshape(-1, k)


def truth_ratios(model, tokenizer, data, batch_size: int = 128, wrong_mean: str = "geometric",
                 true_answer: str = "paraphrased") -> np.ndarray:
    """Per question: R = P(wrong) / P(true), each P the answer's length-normalised probability (exp of minus its
    mean token loss). Below 1 the model prefers the truth; about 1 it cannot tell; above 1 it prefers a wrong answer.

    The convention of TOFU's and open-unlearning's code (the default): the wrong answers' P is their **geometric**
    mean, exp(-mean of their mean token losses), and the true side is the **paraphrased** answer where the data has
    one (TOFU's ``paraphrased_answer``; :func:`true_answers`), else the answer. ``wrong_mean="arithmetic"`` takes the
    mean of the wrong answers' probabilities instead (the kit's earlier form: one very likely wrong answer then
    counts more), ``true_answer="answer"`` the trained answer itself.
    """
    if wrong_mean not in WRONG_MEANS:
        raise ValueError(f"Unknown wrong_mean {wrong_mean!r}: choose one of {WRONG_MEANS}.")
    true, wrong = answer_logprobs(model, tokenizer, data, batch_size, true_answer)
    if wrong_mean == "geometric":
        return np.exp(wrong.mean(1) - true)
    return np.exp(wrong).mean(1) / np.maximum(np.exp(true), 1e-30)


TRUTH_RATIO_FORMS = {
    "closer_to_1": ("mean min(R, 1/R)", "higher = closer to 1: true and wrong answers about equally likely, as for "
                                        "facts never learned (TOFU's forget-set form)"),
    "true_better": ("mean max(0, 1 - R)", "higher = prefers the true answer (TOFU's retain-set form)"),
}


def truth_ratio_score(ratios, form: str = "closer_to_1") -> float:
    """One number from per-question truth ratios R, in TOFU's two forms (open-unlearning's aggregator names):

    * ``"closer_to_1"``: mean min(R, 1/R), what TOFU and open-unlearning report on the **forget** set. It is 1 when
      every wrong answer is exactly as likely as the true one, and falls as the model prefers either side, so a
      model that answers the forget set *wrongly* with confidence scores low too.
    * ``"true_better"``: mean max(0, 1 - R), TOFU's form on the **retain** set (and real authors, world facts):
      0 when the model likes a wrong answer at least as much as the truth, up to 1 when it prefers the truth.
    """
    r = np.asarray(ratios, dtype=float)
    if form == "closer_to_1":
        with np.errstate(divide="ignore"):  # min(R, 1/R) = exp(-|log R|), also where R under- or overflowed
            return float(np.exp(-np.abs(np.log(r))).mean())
    if form == "true_better":
        return float(np.clip(1 - r, 0, None).mean())
    raise ValueError(f"Unknown truth-ratio form {form!r}: choose one of {tuple(TRUTH_RATIO_FORMS)}.")


def truth_ratio_forms(models, tokenizer, data, batch_size: int = 128) -> pd.DataFrame:
    """The same truth ratios R = P(wrong) / P(true) summarised both ways, one column per model (a model, or
    ``{name: model}``): row ``closer_to_1`` is TOFU's forget-set number, mean min(R, 1/R), which is highest when the
    model cannot tell the true answer from the wrong ones; row ``true_better`` is the retain-set number, mean
    max(0, 1 - R), which is highest when the model prefers the truth. On forget questions an unlearned model should
    move the first toward the retain model's value, not maximise the second: the two forms disagree exactly on a
    model that has learned to prefer the *wrong* answers. Columns ``formula`` and ``reads`` say what each row is.
    A model given as None is left out; questions without wrong answers give one row that says so."""
    models = models if isinstance(models, dict) else {"model": models}
    models = {name: m for name, m in models.items() if m is not None}  # e.g. no retain model for a data file
    if "perturbed" not in data.column_names:  # said in the table, so that a notebook on any file runs through
        return pd.DataFrame({"reads": ["no truth ratio: these questions have no wrong answers (perturbed) to "
                                       "compare with"]}, index=pd.Index(["n/a"], name="form"))
    ratios = {name: truth_ratios(m, tokenizer, data, batch_size) for name, m in models.items()}
    table = pd.DataFrame({name: {form: truth_ratio_score(r, form) for form in TRUTH_RATIO_FORMS}
                          for name, r in ratios.items()})
    table["formula"] = [TRUTH_RATIO_FORMS[f][0] for f in table.index]
    table["reads"] = [TRUTH_RATIO_FORMS[f][1] for f in table.index]
    table.index.name = "form"
    return table


# ----------------------------------------------------------------------------------------------
# Perplexity and membership inference
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def token_logprobs(model, tokenizer, texts: list[str], batch_size: int = 64, with_stats: bool = False):
    """Per text: log-probabilities of each token after the first (and for Min-K%++ the mean/std of log p over the
    vocabulary)."""
    if not texts:
        raise ValueError("No texts to score: the list is empty.")
    enc = encode_texts(tokenizer, texts)
    dev = _device_of(model)
    pad = pad_id(tokenizer)
    out = [None] * len(enc)
    for idx in _length_sorted_batches([len(e) for e in enc], batch_size):
        chunk = [enc[j] for j in idx]
        batch = pad_batch(chunk, pad)
        ids, att = batch["input_ids"], batch["attention_mask"]
        logp = model(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits.float().log_softmax(-1)
        for i, (j, s) in enumerate(zip(idx, chunk)):
            lp = logp[i, : len(s) - 1]
            tgt = torch.tensor(s[1:], device=lp.device)
            tok_lp = lp.gather(-1, tgt[:, None])[:, 0]
            if with_stats:
                p = lp.exp()
                mu = (p * lp).sum(-1)
                sigma = ((p * lp.pow(2)).sum(-1) - mu.pow(2)).clamp_min(1e-12).sqrt()
                out[j] = (tok_lp.cpu().numpy(), mu.cpu().numpy(), sigma.cpu().numpy())
            else:
                out[j] = tok_lp.cpu().numpy()
    return out


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 64) -> float:
    """exp(mean token negative log-likelihood) on general text (lower = the model still writes well)."""
    lps = token_logprobs(model, tokenizer, texts, batch_size)
    return float(np.exp(-np.concatenate(lps).mean()))


ZLIB_NLLS = ("mean", "total")


def mia_scores(model, tokenizer, texts: list[str], k: float = 0.4, batch_size: int = 64, zlib_nll: str = "mean",
               count: str = "floor") -> pd.DataFrame:
    """Membership scores per text, each oriented so that higher = "looks like training data".

    loss: minus mean token NLL; zlib: minus (mean token NLL / zlib-compressed length in bytes), the ratio of
    Carlini et al. (2021) as MUSE and open-unlearning compute it (``zlib_nll="total"``: the summed NLL, the kit's
    earlier form, which also grows with the text's length); min_k: mean of the k lowest token log-probs
    (:func:`min_k_score`; ``count`` as there); min_k_pp: the same on log-probs standardised by the model's own
    expectation over the vocabulary (Min-K%++). k = 0.4 follows MUSE's default Min-40%.
    """
    if zlib_nll not in ZLIB_NLLS:
        raise ValueError(f"Unknown zlib_nll {zlib_nll!r}: choose one of {ZLIB_NLLS}.")
    rows = []
    for text, (lp, mu, sigma) in zip(texts, token_logprobs(model, tokenizer, texts, batch_size, with_stats=True)):
        nll = lp.mean() if zlib_nll == "mean" else lp.sum()
        rows.append({
            "loss": float(lp.mean()),
            "zlib": float(nll / len(zlib.compress(text.encode()))),
            "min_k": min_k_score(lp, k, count),
            "min_k_pp": min_k_score((lp - mu) / sigma, k, count),
        })
    return pd.DataFrame(rows)


def auc(member_scores, nonmember_scores) -> float:
    """Area under the ROC curve for telling members (higher scores) from non-members; 0.5 = chance."""
    a = np.asarray(member_scores, dtype=float)
    b = np.asarray(nonmember_scores, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("AUC needs at least one member and one non-member score.")
    # Mann-Whitney U with ties counted half
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2
    return float(u / (len(a) * len(b)))


def membership_scores(model, tokenizer, data: "EvalData", score: str = "min_k", k: float = 0.4):
    """(forget texts' scores, holdout texts' scores): one membership score of :func:`mia_scores` (``loss``,
    ``zlib``, ``min_k`` or ``min_k_pp``) on the members and on texts never trained on, e.g. for a histogram of the
    two distributions (their :func:`auc` is the report card's ``mia_auc_<score>``). None when ``data`` has no
    holdout texts (a data file without holdout questions), where there is nothing to compare the members with."""
    if data.holdout_texts is None:
        return None
    return (mia_scores(model, tokenizer, data.forget_texts, k)[score],
            mia_scores(model, tokenizer, data.holdout_texts, k)[score])


def forget_quality(truth_ratios_model, truth_ratios_retain) -> float:
    """TOFU's forget quality: the p-value of the two-sample Kolmogorov-Smirnov test between the model's and the retain
    model's per-question truth ratios on the forget set (higher = indistinguishable from the retain model). TOFU
    tests 1/R (its "truth ratio" is P(true) / P(wrong)); the KS test only compares ranks, so R gives the same p-value.
    """
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(truth_ratios_model), np.asarray(truth_ratios_retain)).pvalue)


def read_truth_ratios(path) -> np.ndarray:
    """A retain model's forget-set truth ratios R (in :func:`truth_ratios`' convention) from a file, for
    :func:`report_card`'s ``retain_truth_ratios`` when the retain model itself is not at hand: a JSON list of
    numbers, or TOFU's own evaluation log of the forget set (``eval_log_forget.json``, whose ``avg_paraphrased_loss``
    and ``average_perturb_loss`` give R = exp(mean token loss of the paraphrased answer - mean over the wrong answers
    of theirs), the geometric-mean ratio TOFU's forget quality tests), in the order of its keys' numbers."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No truth-ratio file at {path}.")
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}).") from None
    if isinstance(found, dict) and {"avg_paraphrased_loss", "average_perturb_loss"} <= set(found):
        para, wrong = found["avg_paraphrased_loss"], found["average_perturb_loss"]
        if set(para) != set(wrong):
            raise ValueError(f"{path}: avg_paraphrased_loss and average_perturb_loss cover different questions.")
        keys = sorted(para, key=lambda key: int(key) if str(key).isdigit() else str(key))
        found = [math.exp(float(para[key]) - float(np.mean(wrong[key]))) for key in keys]
    if not isinstance(found, list) or not found or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in found):
        raise ValueError(f"{path} holds neither a list of truth ratios nor TOFU's eval_log_forget.json (with "
                         "avg_paraphrased_loss and average_perturb_loss).")
    ratios = np.asarray(found, dtype=float)
    if not np.isfinite(ratios).all() or (ratios <= 0).any():
        bad = ratios[~(np.isfinite(ratios) & (ratios > 0))][0]
        raise ValueError(f"{path}: a truth ratio is a positive number; found {bad}.")
    return ratios


# ----------------------------------------------------------------------------------------------
# The report card
# ----------------------------------------------------------------------------------------------
METRICS = {
    "forget_accuracy": "lower = more forgotten (trained phrasings of the forget people)",
    "forget_paraphrase_accuracy": "lower = forgotten even when asked in a held-out phrasing",
    "retain_accuracy": "higher = other people's facts kept",
    "retain_paraphrase_accuracy": "higher = other people's facts kept, held-out phrasings",
    "holdout_accuracy": "about chance = the model never learned these people",
    "topic_accuracy": "higher = topic knowledge kept",
    "forget_answer_prob": "lower = less probability on the forgotten answers",
    "retain_answer_prob": "higher = confident on kept facts",
    "forget_truth_ratio": "higher = true and wrong answers closer to equally likely on forget questions "
                          "(mean min(R, 1/R), TOFU)",
    "retain_truth_ratio": "higher = prefers the true answer on retain questions (mean max(0, 1 - R), TOFU)",
    "utility_perplexity": "lower = general text still modelled well",
    "mia_auc_loss": "0.5 = forget set looks like never-seen people; 1 = clearly a member",
    "mia_auc_zlib": "0.5 = forget set looks like never-seen people; 1 = clearly a member (mean NLL / zlib size)",
    "mia_auc_min_k": "0.5 = forget set looks like never-seen people; 1 = clearly a member (Min-40%)",
    "mia_auc_min_k_pp": "0.5 = forget set looks like never-seen people; 1 = clearly a member",
    "forget_quality": "higher = truth ratios indistinguishable from the retain model (KS p-value)",
}


@dataclass
class EvalData:
    """The question sets a report card uses, built once per world and split (:func:`eval_data`) or from a data
    file's forget / retain questions (:func:`eval_data_from`, where the sets a file lacks are None).

    ``retain_perturbed``: retain questions with wrong answers for the retain truth ratio when ``retain`` has none
    (TOFU's ``retain_perturbed.json``: its retain truth ratio is measured on those 400 questions)."""

    forget: object
    retain: object
    forget_para: object = None
    retain_para: object = None
    holdout: object = None
    topics: object = None
    utility: list[str] | None = None
    forget_texts: list[str] | None = None
    holdout_texts: list[str] | None = None
    retain_perturbed: object = None


def eval_data(world: World, split: str = "forget05", max_retain_people: int | None = 40, seed: int = 0) -> EvalData:
    """Question sets for the report card. Retain people are subsampled (deterministically) to keep it fast."""
    import random

    retain_people = world.retain_people(split)
    if max_retain_people and len(retain_people) > max_retain_people:
        retain_people = sorted(random.Random(seed).sample(retain_people, max_retain_people))
    keep = set(retain_people)
    forget_people = world.forget_people(split)
    holdout_people = world.holdout_people
    if set(forget_people) & set(holdout_people):
        raise ValueError("forget and holdout people overlap; the world's splits are inconsistent.")
    q = world.facts("trained", "trained")
    para = world.facts("trained", "paraphrase")
    fset = set(forget_people)

    def subset(ds, people):
        return ds.select([i for i, p in enumerate(ds["person"]) if p in people])

    # MIA compares the same kind of text: trained-phrasing statements of forget vs holdout people
    hold = world.facts("holdout", "trained")
    fq = subset(q, fset)
    hold_texts = [p + " " + a for p, a in zip(hold["prompt"], hold["answer"])]
    forget_texts = [p + " " + a for p, a in zip(fq["prompt"], fq["answer"])]
    return EvalData(
        forget=fq, forget_para=subset(para, fset), retain=subset(q, keep), retain_para=subset(para, keep),
        holdout=hold, topics=world.topics_dataset(), utility=list(world.general_eval),
        forget_texts=forget_texts, holdout_texts=hold_texts)


def eval_data_from(data: dict) -> EvalData:
    """An :class:`EvalData` from ``{"forget": ..., "retain": ...}`` question sets (e.g.
    :func:`unlearn_utils.benchmark_data.load_data`); optional ``forget_para``, ``retain_para``, ``holdout``,
    ``topics``, ``utility`` and ``retain_perturbed`` are used when present. Metrics without their data are left
    out of report cards."""
    missing = [k for k in ("forget", "retain") if data.get(k) is None or len(data[k]) == 0]
    if missing:
        raise ValueError(f"The data has no {' or '.join(missing)} questions: a report card needs both.")
    holdout = data.get("holdout")

    def texts(ds):
        return [p + " " + a for p, a in zip(ds["prompt"], ds["answer"])]

    return EvalData(forget=data["forget"], retain=data["retain"], forget_para=data.get("forget_para"),
                    retain_para=data.get("retain_para"), holdout=holdout, topics=data.get("topics"),
                    utility=data.get("utility"), forget_texts=texts(data["forget"]) if holdout is not None else None,
                    holdout_texts=texts(holdout) if holdout is not None else None,
                    retain_perturbed=data.get("retain_perturbed"))


def report_card(model, tokenizer, world: World | EvalData, split: str = "forget05", retain_model=None,
                retain_truth_ratios=None, mia: bool = True, batch_size: int = 128,
                truth_ratio_form: str = "closer_to_1", wrong_mean: str = "geometric") -> pd.DataFrame:
    """Evaluate a model on a world split; one row per metric with its value and what higher means.

    Pass ``retain_model`` (or its forget-set truth ratios, e.g. :func:`read_truth_ratios`) to get forget quality.
    Truth ratios follow TOFU (:func:`truth_ratios`, :func:`truth_ratio_score`): ``forget_truth_ratio`` is mean
    min(R, 1/R) (``truth_ratio_form="true_better"``: mean max(0, 1 - R), the kit's earlier form), and
    ``retain_truth_ratio`` mean max(0, 1 - R), on ``data.retain_perturbed`` where given (TOFU's retain_perturbed
    questions), else on the retain set when it has wrong answers. ``wrong_mean`` as in :func:`truth_ratios`.
    """
    if truth_ratio_form not in TRUTH_RATIO_FORMS:
        raise ValueError(f"Unknown truth_ratio_form {truth_ratio_form!r}: choose one of {tuple(TRUTH_RATIO_FORMS)}.")
    data = world if isinstance(world, EvalData) else eval_data(world, split)
    values: dict[str, float] = {}
    f = answer_scores(model, tokenizer, list(data.forget["prompt"]), list(data.forget["answer"]), batch_size)
    r = answer_scores(model, tokenizer, list(data.retain["prompt"]), list(data.retain["answer"]), batch_size)
    values["forget_accuracy"] = float(f["correct"].mean())
    if data.forget_para is not None:
        values["forget_paraphrase_accuracy"] = accuracy(model, tokenizer, data.forget_para, batch_size)
    values["retain_accuracy"] = float(r["correct"].mean())
    if data.retain_para is not None:
        values["retain_paraphrase_accuracy"] = accuracy(model, tokenizer, data.retain_para, batch_size)
    if data.holdout is not None:
        values["holdout_accuracy"] = accuracy(model, tokenizer, data.holdout, batch_size)
    if data.topics is not None:
        values["topic_accuracy"] = accuracy(model, tokenizer, data.topics, batch_size)
    values["forget_answer_prob"] = float(f["prob"].mean())
    values["retain_answer_prob"] = float(r["prob"].mean())
    tr_forget = None
    if "perturbed" in data.forget.column_names:  # truth ratios need wrong answers to compare with
        tr_forget = truth_ratios(model, tokenizer, data.forget, batch_size, wrong_mean)
        values["forget_truth_ratio"] = truth_ratio_score(tr_forget, truth_ratio_form)
    retain_tr_set = _retain_truth_set(data)
    if retain_tr_set is not None:
        tr_retain = truth_ratios(model, tokenizer, retain_tr_set, batch_size, wrong_mean)
        values["retain_truth_ratio"] = truth_ratio_score(tr_retain, "true_better")
    if data.utility:
        values["utility_perplexity"] = perplexity(model, tokenizer, data.utility)
    if mia and data.forget_texts and data.holdout_texts:
        fm = mia_scores(model, tokenizer, data.forget_texts)
        hm = mia_scores(model, tokenizer, data.holdout_texts)
        for col in fm.columns:
            values[f"mia_auc_{col}"] = auc(fm[col], hm[col])
    if tr_forget is not None and retain_truth_ratios is None and retain_model is not None:
        retain_truth_ratios = truth_ratios(retain_model, tokenizer, data.forget, batch_size, wrong_mean)
    if tr_forget is not None and retain_truth_ratios is not None:
        values["forget_quality"] = forget_quality(tr_forget, retain_truth_ratios)
    meaning = dict(METRICS)
    if truth_ratio_form != "closer_to_1":
        meaning["forget_truth_ratio"] = ("higher = still prefers the true answer on forget questions "
                                         "(mean max(0, 1 - R))")
    return pd.DataFrame([{"metric": k, "value": v, "higher_means": meaning[k]} for k, v in values.items()])


def _retain_truth_set(data: EvalData):
    """The questions of the retain truth ratio: ``retain_perturbed`` where given, else the retain set when it has
    wrong answers, else None."""
    if data.retain_perturbed is not None and len(data.retain_perturbed):
        return data.retain_perturbed
    return data.retain if "perturbed" in data.retain.column_names else None


def compare(cards: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Put several report cards side by side: one row per model, one column per metric."""
    return pd.DataFrame({name: card.set_index("metric")["value"] for name, card in cards.items()}).T


def report_cards(model, tokenizer, data: EvalData, retain_model=None, unlearned: dict | None = None,
                 progress: bool = False, retain_truth_ratios=None, **options) -> dict[str, pd.DataFrame]:
    """{name: report card} of the original ``model`` ("original"), the retain model ("retain model", when there is
    one) and each of ``unlearned`` ({name: model}), in that order: the rows a notebook compares.

    Forget quality compares every model's forget-set truth ratios with the retain model's, computed once; it needs
    a retain model (or its truth ratios, ``retain_truth_ratios``, e.g. :func:`read_truth_ratios`) and wrong answers
    to compare with (a ``perturbed`` column in ``data.forget``), and is left out otherwise. ``options``:
    :func:`report_card`'s ``truth_ratio_form``, ``wrong_mean``, ``mia``, ``batch_size``."""
    from tqdm.auto import tqdm

    has_wrong_answers = "perturbed" in data.forget.column_names
    retain_tr = retain_truth_ratios
    if retain_tr is None and retain_model is not None and has_wrong_answers:
        retain_tr = truth_ratios(retain_model, tokenizer, data.forget, wrong_mean=options.get("wrong_mean",
                                                                                              "geometric"))
    cards = {"original": report_card(model, tokenizer, data, retain_truth_ratios=retain_tr, **options)}
    if retain_model is not None:
        cards["retain model"] = report_card(retain_model, tokenizer, data, retain_truth_ratios=retain_tr, **options)
    for name, other in tqdm((unlearned or {}).items(), desc="report cards", disable=not progress):
        cards[name] = report_card(other, tokenizer, data, retain_truth_ratios=retain_tr, **options)
    return cards


def select_metrics(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The columns ``metrics`` of a :func:`compare` table, in that order, leaving out those it lacks (a data file
    without paraphrases, holdout or topic questions has no metrics for them)."""
    return table[[m for m in metrics if m in table]]


def accuracy_by(model, tokenizer, data, by: str = "attribute", batch_size: int = 128) -> pd.Series:
    """Greedy accuracy grouped by a column of ``data`` (e.g. ``attribute`` or ``topic``)."""
    scores = answer_scores(model, tokenizer, list(data["prompt"]), list(data["answer"]), batch_size)
    scores[by] = list(data[by])
    return scores.groupby(by)["correct"].mean()


def accuracy_table(model, tokenizer, sets: dict, by: str = "attribute", batch_size: int = 128) -> pd.DataFrame:
    """Greedy accuracy of one model on several question sets ({name: questions}), grouped by a column they share
    (e.g. ``attribute``): one column per set, one row per group, and a last row ``ALL`` with each whole set's
    accuracy. E.g. trained against held-out phrasings: does the model know the facts, or only the strings?"""
    by_group, overall = {}, []
    for name, data in sets.items():
        scores = answer_scores(model, tokenizer, list(data["prompt"]), list(data["answer"]), batch_size)
        scores[by] = list(data[by])
        by_group[name] = scores.groupby(by)["correct"].mean()
        overall.append(float(scores["correct"].mean()))
    table = pd.DataFrame(by_group)
    table.loc["ALL"] = overall
    return table


def accuracy_on_sets(model, tokenizer, sets: dict, batch_size: int = 128) -> pd.Series:
    """One model's greedy accuracy on each of several question sets ({name: questions}): a Series "accuracy"."""
    return pd.Series({name: accuracy(model, tokenizer, data, batch_size) for name, data in sets.items()},
                     name="accuracy", dtype=float)


def accuracy_of_models(models: dict, tokenizer, data, batch_size: int = 128) -> pd.Series:
    """The greedy accuracy of each of several models ({name: model}, e.g. quantized versions of one) on the same
    questions: a Series "accuracy" indexed by name."""
    return pd.Series({name: accuracy(m, tokenizer, data, batch_size) for name, m in models.items()},
                     name="accuracy", dtype=float)


def trajectory_metrics(tokenizer, data: EvalData, topics: bool = False):
    """A fast ``eval_fn`` for :func:`unlearn_utils.unlearning.unlearn`: forget / retain / paraphrase accuracy
    (and, with ``topics=True``, accuracy on the topic questions, a utility set no method trains on)."""

    sets = {"forget_accuracy": data.forget, "forget_paraphrase_accuracy": data.forget_para,
            "retain_accuracy": data.retain, "topic_accuracy": data.topics if topics else None}
    encoded: dict = {}  # each set is tokenized once, on the first call, and scored at every checkpoint
    seen: dict = {}     # small models: weights fingerprint -> scores (every run's step 0 is the same original)

    def eval_fn(model) -> dict:
        if not encoded:
            encoded.update({name: encode_qa(tokenizer, list(d["prompt"]), list(d["answer"]))
                            for name, d in sets.items() if d is not None})
        small = sum(p.numel() for p in model.parameters()) <= 50_000_000  # hashing a large model costs more
        key = weights_fingerprint(model) if small else None
        if key not in seen:
            scores = {name: float(score_pairs(model, tokenizer, pairs, logprobs=False)["correct"].mean())
                      for name, pairs in encoded.items()}
            if key is None:
                return scores
            seen[key] = scores
        return dict(seen[key])

    return eval_fn


def first_checkpoint_below(log: pd.DataFrame, forget_at_most: float, column: str = "forget_accuracy") -> pd.Series:
    """The first evaluated checkpoint of a trajectory whose forget accuracy is at most ``forget_at_most``
    (to compare methods at equal forget accuracy); the last checkpoint if none gets there."""
    rows = log.dropna(subset=[column])
    if rows.empty:
        raise ValueError("the log has no evaluated checkpoints: pass eval_fn and eval_every when unlearning.")
    hit = rows[rows[column] <= forget_at_most]
    return (hit.iloc[0] if len(hit) else rows.iloc[-1]).copy()


def reference_points(models: dict, tokenizer, data: EvalData) -> dict[str, tuple[float, float]]:
    """{name: (forget accuracy, retain accuracy)} of each model of ``models`` that is not None (e.g. the original
    and the retain model, which a data file may lack): the fixed points a forget / retain trajectory is read
    against (``plotting.tradeoff(reference=...)``)."""
    return {name: (accuracy(m, tokenizer, data.forget), accuracy(m, tokenizer, data.retain))
            for name, m in models.items() if m is not None}
