"""Every exercise check passes the reference and fails wrong implementations."""

import numpy as np
import torch

from unlearn_utils import checks
from unlearn_utils.evaluate import greedy_match, min_k_score


def test_greedy_match_check():
    assert checks.check_greedy_match(greedy_match).passed

    def off_by_one(logits, prompt_len, answer_ids):
        pos = torch.arange(prompt_len, prompt_len + len(answer_ids)).clamp(max=logits.shape[0] - 1)
        return bool((logits[pos].argmax(-1) == torch.tensor(answer_ids)).all())

    def first_token_only(logits, prompt_len, answer_ids):
        return bool(logits[prompt_len - 1].argmax() == answer_ids[0])

    def stub(*a):
        raise NotImplementedError

    r = checks.check_greedy_match(off_by_one)
    assert not r.passed and "prompt_len - 1" in r.message
    assert not checks.check_greedy_match(first_token_only).passed
    r = checks.check_greedy_match(stub)
    assert not r.passed and "not attempted" in r.message


def test_min_k_check():
    # notebook 00's exercise rounds k n (the kit's default floors it, as open-unlearning does)
    assert checks.check_min_k(lambda lp, k: min_k_score(lp, k, count="round")).passed
    assert not checks.check_min_k(min_k_score).passed

    def highest(lp, k):
        lp = np.sort(lp)[::-1]
        return float(lp[: max(1, round(k * len(lp)))].mean())

    def floor_k(lp, k):
        lp = np.sort(lp)
        return float(lp[: max(1, int(k * len(lp)))].mean())

    r = checks.check_min_k(highest)
    assert not r.passed and "HIGHEST" in r.message
    assert not checks.check_min_k(floor_k).passed
    assert not checks.check_min_k(lambda lp, k: float(np.mean(lp))).passed


def test_ga_check():
    import torch.nn.functional as F

    from unlearn_utils.unlearning.losses import ga_loss

    assert checks.check_ga_loss(ga_loss).passed

    def plus_nll(logits, labels):
        return -ga_loss(logits, labels)

    def no_shift(logits, labels):
        return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def no_mask(logits, labels):
        lg, lb = logits[:, :-1], labels[:, 1:].clamp_min(0)
        return -F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1))

    r = checks.check_ga_loss(plus_nll)
    assert not r.passed and "wrong sign" in r.message
    r = checks.check_ga_loss(no_shift)
    assert not r.passed and "shift" in r.message
    assert not checks.check_ga_loss(no_mask).passed


def test_npo_check():
    import torch.nn.functional as F

    from unlearn_utils.unlearning.losses import npo_loss

    assert checks.check_npo_loss(npo_loss).passed
    r = checks.check_npo_loss(lambda s, r, b: npo_loss(r, s, b))
    assert not r.passed and "wrong sign" in r.message
    r = checks.check_npo_loss(lambda s, r, b: -F.logsigmoid(b * (s - r)).mean())
    assert not r.passed and "2/β" in r.message


def test_krs_check():
    from unlearn_utils.patching import knowledge_recovery_score as krs

    assert checks.check_krs(krs).passed
    r = checks.check_krs(lambda o, p, u, m: krs(o, p, u, torch.ones_like(m)))
    assert not r.passed and "ALL positions" in r.message
    assert not checks.check_krs(lambda o, p, u, m: 1 - krs(o, p, u, m)).passed  # inverted
    assert not checks.check_krs(lambda o, p, u, m: krs(o, u, p, m)).passed  # patched and unlearned swapped


def test_depth_check():
    def depth(d1, d2, tau):
        keep = d1 > tau
        if not keep.any():
            return float("nan")
        return float((d1[keep] * (d2[keep] / d1[keep]).clamp(0, 1)).sum() / d1[keep].sum())

    assert checks.check_depth(depth).passed
    r = checks.check_depth(lambda d1, d2, t: float((d2[d1 > t]).sum() / d1[d1 > t].sum()))
    assert not r.passed and "unclipped" in r.message
    assert not checks.check_depth(lambda d1, d2, t: float((d2 / d1).clamp(0, 1).mean())).passed  # unweighted, all
    r = checks.check_depth(lambda d1, d2, t: depth(d1, d2, t) if (d1 > t).any() else 0.0)
    assert not r.passed and "NaN" in r.message


def test_patch_mlp_check():
    import checks_patch_impls as impl

    assert checks.check_patch_mlp(impl.patch_right).passed
    r = checks.check_patch_mlp(impl.no_patch)
    assert not r.passed and "UNPATCHED" in r.message
    assert not checks.check_patch_mlp(impl.patch_wrong_layer).passed
    assert not checks.check_patch_mlp(impl.patch_output_instead).passed


def test_vocab_projection_check():
    assert checks.check_vocab_projection(lambda E, v, k: (E @ v).topk(k).indices).passed
    r = checks.check_vocab_projection(lambda E, v, k: (E @ -v).topk(k).indices)
    assert not r.passed and "SUPPRESSES" in r.message
    r = checks.check_vocab_projection(lambda E, v, k: (E @ v).topk(k).indices.flip(0))
    assert not r.passed
    r = checks.check_vocab_projection(lambda E, v, k: (E.T @ v).topk(k).indices)
    assert not r.passed and "raised" in r.message


def test_jaccard_check():
    from unlearn_utils.concepts import jaccard

    assert checks.check_jaccard(jaccard).passed
    r = checks.check_jaccard(lambda a, b: sum(x in b for x in a) / len(set(a) | set(b)) if a or b else 1.0)
    assert not r.passed and "Duplicates" in r.message
    r = checks.check_jaccard(lambda a, b: len(set(a) & set(b)) / len(set(a) | set(b)))
    assert not r.passed and "empty" in r.message
    assert not checks.check_jaccard(lambda a, b: len(set(a) & set(b)) / max(len(a), len(b), 1)).passed


def test_rtn_quantize_check():
    from unlearn_utils.quantize import quantize_tensor

    # notebook 05's exercise states the absmax grid, max|w| / (2^(bits-1) - 1) (the kit's default is the paper's)
    assert checks.check_rtn_quantize(lambda w, b, g: quantize_tensor(w, b, g, step="absmax")).passed
    assert not checks.check_rtn_quantize(lambda w, b, g: quantize_tensor(w, b, g)).passed
    r = checks.check_rtn_quantize(lambda w, b, g: quantize_tensor(w, b, None, step="absmax"))
    assert not r.passed and "ONE grid per row" in r.message

    def floor_rtn(w, bits, g):
        o, i = w.shape
        x = w.reshape(o, i // g, g)
        s = x.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        return (torch.floor(x / s) * s).reshape(o, i)

    r = checks.check_rtn_quantize(floor_rtn)
    assert not r.passed and "half a step" in r.message


def test_recovery_rate_check():
    from unlearn_utils.relearn import recovery_above_floor

    assert checks.check_recovery_rate(recovery_above_floor).passed
    r = checks.check_recovery_rate(lambda u, r, o: u / o)
    assert not r.passed and "floor" in r.message
    assert not checks.check_recovery_rate(lambda u, r, o: (u - r) / o).passed


def test_check_names_match_function_names():
    """The autograder matches a notebook's `checks.check_X(` calls to the results named X."""
    import inspect

    from unlearn_utils.evaluate import greedy_match, min_k_score
    from unlearn_utils.patching import knowledge_recovery_score
    from unlearn_utils.unlearning.losses import ga_loss, npo_loss

    refs = {"greedy_match": greedy_match, "min_k": lambda lp, k: min_k_score(lp, k, count="round"),
            "ga_loss": ga_loss, "npo_loss": npo_loss,
            "krs": knowledge_recovery_score}
    import checks_patch_impls as impl

    refs["patch_mlp"] = impl.patch_right
    from unlearn_utils.concepts import jaccard

    refs["jaccard"] = jaccard
    from unlearn_utils.quantize import quantize_tensor
    from unlearn_utils.relearn import recovery_above_floor

    refs["rtn_quantize"] = lambda w, b, g: quantize_tensor(w, b, g, step="absmax")  # notebook 05's stated grid
    refs["recovery_rate"] = recovery_above_floor
    refs["vocab_projection"] = lambda E, v, k: (E @ v).topk(k).indices
    from unlearn_utils.grun import gated_loss, loreft_edit

    refs["loreft_edit"], refs["gated_loss"] = loreft_edit, gated_loss
    from unlearn_utils.audit import share_back

    refs["share_back"] = share_back
    from unlearn_utils.patching import LayerDrops, depth_from_drops

    refs["depth"] = lambda d1, d2, tau: float(depth_from_drops(LayerDrops(None, d1[None]), LayerDrops(None, d2[None]),
                                                               tau).per_question[0])
    refs["best_run"] = lambda h, m: (max((i for i, r in enumerate(h) if r["forget_accuracy"] <= m),
                                         key=lambda i: h[i]["retain_accuracy"], default=None))
    names = [n[len("check_"):] for n, f in inspect.getmembers(checks, inspect.isfunction) if n.startswith("check_")]
    assert set(names) == set(refs)
    for n in names:
        assert getattr(checks, f"check_{n}")(refs[n]).name == n


def test_loreft_edit_check():
    from unlearn_utils.grun import loreft_edit

    assert checks.check_loreft_edit(loreft_edit).passed
    r = checks.check_loreft_edit(lambda h, R, W, b: h + loreft_edit(h, R, W, b))
    assert not r.passed and "edit alone" in r.message
    r = checks.check_loreft_edit(lambda h, R, W, b: (h @ W.T + b) @ R)
    assert not r.passed and "Subtract R h" in r.message
    r = checks.check_loreft_edit(lambda h, R, W, b: (h @ W.T - h @ R.T) @ R)
    assert not r.passed and "bias" in r.message
    assert not checks.check_loreft_edit(lambda h, R, W, b: (h @ W.T + b - h @ R.T) @ R.T.T.T).passed  # shape error


def test_gated_loss_check():
    import torch.nn.functional as F

    from unlearn_utils.grun import gated_loss

    assert checks.check_gated_loss(gated_loss).passed

    def flipped(ft, rt, fg, rg, lam):
        return gated_loss(ft, rt, rg, fg, lam) if len(fg) == len(rg) else ft + rt + lam * F.binary_cross_entropy(
            torch.cat([fg, rg]), torch.cat([torch.zeros(len(fg)), torch.ones(len(rg))]))

    def no_gate(ft, rt, fg, rg, lam):
        return ft + rt

    def per_set(ft, rt, fg, rg, lam):
        return ft + rt + lam * (F.binary_cross_entropy(fg, torch.ones(len(fg)))
                                + F.binary_cross_entropy(rg, torch.zeros(len(rg))))

    r = checks.check_gated_loss(flipped)
    assert not r.passed and "flipped" in r.message
    r = checks.check_gated_loss(no_gate)
    assert not r.passed and "missing" in r.message
    assert not checks.check_gated_loss(per_set).passed


def test_share_back_check():
    from unlearn_utils.audit import share_back

    assert checks.check_share_back(share_back).passed
    r = checks.check_share_back(lambda p, u, o: p / o)
    assert not r.passed and "not from zero" in r.message
    r = checks.check_share_back(lambda p, u, o: p - u)
    assert not r.passed
    r = checks.check_share_back(lambda p, u, o: (p - u) / (o - u) if o != u else 0.0)    # no NaN case
    assert not r.passed and "nan" in r.message


def test_best_run_check():
    def reference(history, max_forget):
        ok = [i for i, r in enumerate(history) if r["forget_accuracy"] <= max_forget]
        return max(ok, key=lambda i: history[i]["retain_accuracy"]) if ok else None

    assert checks.check_best_run(reference).passed

    def no_filter(history, max_forget):
        return max(range(len(history)), key=lambda i: history[i]["retain_accuracy"])

    def strict(history, max_forget):  # < instead of <=
        ok = [i for i, r in enumerate(history) if r["forget_accuracy"] < max_forget]
        return max(ok, key=lambda i: history[i]["retain_accuracy"]) if ok else None

    def most_forgetting(history, max_forget):
        return min(range(len(history)), key=lambda i: history[i]["forget_accuracy"])

    r = checks.check_best_run(no_filter)
    assert not r.passed and "filter by forget accuracy" in r.message
    assert not checks.check_best_run(strict).passed
    assert not checks.check_best_run(most_forgetting).passed
