"""Exercise checks: test a learner's function against the kit's reference on small inputs.

Each ``check_*`` runs the learner's function on a few hand-made cases, prints a clear pass or a
message that says what is wrong (shape, sign, value off by how much, a likely off-by-one), and
returns a :class:`CheckResult`. Checks never raise on a wrong answer; they do let ``NotImplementedError``
through so an untouched stub is reported as "not attempted".

In a notebook, a check's verdict is feedback for the learner only. The autograder (:mod:`unlearn_utils.autograde`)
reads nothing a check prints, returns or writes in the learner's kernel: code in that kernel could forge any of it.
It runs the same checks again in its own process, on the learner's functions called from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

RESULTS: list["CheckResult"] = []  # every check run in this process (the learner's record, never a grade)


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str
    details: dict = field(default_factory=dict)

    def __bool__(self) -> bool:  # so `assert check_x(fn)` reads naturally
        return self.passed


def _report(name: str, passed: bool, message: str, **details) -> CheckResult:
    res = CheckResult(name, passed, message, details)
    RESULTS.append(res)
    print(("PASS " if passed else "FAIL ") + f"[{name}] {message}")
    return res


def _compare(name: str, got, want, atol: float = 1e-5, what: str = "value") -> str | None:
    """None when close; else a message saying how it differs (shape, NaN, sign, or by how much)."""
    g = torch.as_tensor(np.asarray(got, dtype=float) if not torch.is_tensor(got) else got.detach().float().cpu())
    w = torch.as_tensor(np.asarray(want, dtype=float) if not torch.is_tensor(want) else want.detach().float().cpu())
    if g.shape != w.shape:
        return f"{what} has shape {tuple(g.shape)}, expected {tuple(w.shape)}."
    if not torch.isfinite(g).all():
        return f"{what} contains NaN or inf."
    diff = (g - w).abs().max().item()
    if diff <= atol:
        return None
    if torch.allclose(g, -w, atol=atol):
        return (f"{what} has the wrong sign (got {g.flatten()[:3].tolist()}, "
                f"expected {w.flatten()[:3].tolist()}).")
    return (f"{what} is off by up to {diff:.4g} (got {g.flatten()[:3].tolist()}, "
            f"expected {w.flatten()[:3].tolist()}).")


def _run(name: str, fn, *args):
    """Call the learner's function; turn an exception into a failing result."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, _report(name, False, "not attempted yet (the stub still raises NotImplementedError).")
    except Exception as e:  # noqa: BLE001 - report any error to the learner
        return None, _report(name, False, f"raised {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------------------------
# Notebook 00
# ----------------------------------------------------------------------------------------------
def check_greedy_match(fn) -> CheckResult:
    """fn(logits [seq, vocab], prompt_len, answer_ids) -> bool, as :func:`unlearn_utils.evaluate.greedy_match`."""
    from .evaluate import greedy_match

    name = "greedy_match"
    gen = torch.Generator().manual_seed(0)
    cases = []
    for prompt_len, n_ans in [(3, 1), (4, 2), (2, 3)]:
        seq = prompt_len + n_ans
        logits = torch.randn(seq, 10, generator=gen)
        answer = torch.randint(0, 10, (n_ans,), generator=gen).tolist()
        # make the greedy prediction match the answer, then also a variant where only the last token is wrong
        for j, tok in enumerate(answer):
            logits[prompt_len - 1 + j, tok] = 10.0
        cases.append((logits.clone(), prompt_len, answer))
        bad = logits.clone()
        bad[prompt_len - 1 + n_ans - 1, (answer[-1] + 1) % 10] = 20.0
        cases.append((bad, prompt_len, answer))
        # a case that an off-by-one implementation gets right by accident is avoided by the shift below
        shifted = torch.randn(seq, 10, generator=gen)
        for j, tok in enumerate(answer):
            shifted[prompt_len + j if prompt_len + j < seq else prompt_len - 1 + j, tok] = 10.0
        cases.append((shifted, prompt_len, answer))
    for i, (logits, p, a) in enumerate(cases):
        got, err = _run(name, fn, logits, p, a)
        if err is not None:
            return err
        want = greedy_match(logits, p, a)
        if bool(got) != want:
            hint = (" Remember: logits at position t predict token t+1, so the first answer token is read at "
                    "position prompt_len - 1.")
            return _report(name, False, f"case {i}: returned {bool(got)}, expected {want}.{hint}")
    return _report(name, True, f"all {len(cases)} cases agree with the reference.")


def check_min_k(fn) -> CheckResult:
    """fn(token_logprobs: 1-D array, k: float) -> float, as :func:`unlearn_utils.evaluate.min_k_score` with the rule
    notebook 00's exercise states (round k n to the nearest integer: ``count="round"``; the kit's default is
    open-unlearning's max(1, floor(k n)))."""
    from functools import partial

    from .evaluate import min_k_score as reference

    min_k_score = partial(reference, count="round")

    name = "min_k"
    rng = np.random.default_rng(0)
    cases = [(np.array([-0.1, -5.0, -0.3, -2.0, -0.2]), 0.4), (np.array([-1.0]), 0.2),
             (rng.normal(-2, 1, 17), 0.2), (rng.normal(-1, 2, 10), 0.5), (rng.normal(-1, 2, 9), 0.3)]
    for i, (lp, k) in enumerate(cases):
        got, err = _run(name, fn, lp.copy(), k)
        if err is not None:
            return err
        want = min_k_score(lp, k)
        bad = _compare(name, float(got), want, atol=1e-6, what=f"case {i} (k={k}, {len(lp)} tokens)")
        if bad is not None:
            if abs(float(got) - float(np.sort(lp)[::-1][: max(1, round(k * len(lp)))].mean())) < 1e-6:
                bad += " It looks like the mean of the HIGHEST log-probs; Min-K% takes the lowest."
            return _report(name, False, bad)
    return _report(name, True, f"all {len(cases)} cases agree with the reference.")


# ----------------------------------------------------------------------------------------------
# Notebook 01
# ----------------------------------------------------------------------------------------------
def check_ga_loss(fn) -> CheckResult:
    """fn(logits [B, T, V], labels [B, T] with -100 = ignore) -> scalar, as :func:`unlearning.losses.ga_loss`."""
    from .unlearning.losses import ga_loss

    name = "ga_loss"
    gen = torch.Generator().manual_seed(1)
    for i, (b, t, v) in enumerate([(1, 4, 5), (3, 6, 7), (2, 5, 11)]):
        logits = torch.randn(b, t, v, generator=gen) * 2
        labels = torch.randint(0, v, (b, t), generator=gen)
        labels[:, : t // 2] = -100  # the prompt is not labelled
        got, err = _run(name, fn, logits.clone(), labels.clone())
        if err is not None:
            return err
        want = ga_loss(logits, labels)
        bad = _compare(name, got, want, atol=1e-5, what=f"case {i} loss")
        if bad is not None:
            unshifted = -_unshifted_nll(logits, labels)
            if abs(float(got) - float(unshifted)) < 1e-5:
                bad += " It matches a version without the one-token shift (logits[t] predicts labels[t+1])."
            return _report(name, False, bad)
    return _report(name, True, "matches the reference on 3 batches (sign, shift and mask all right).")


def _unshifted_nll(logits, labels):
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def check_npo_loss(fn) -> CheckResult:
    """fn(seq_nll [B], ref_seq_nll [B], beta) -> scalar, as :func:`unlearning.losses.npo_loss`."""
    from .unlearning.losses import npo_loss

    name = "npo_loss"
    gen = torch.Generator().manual_seed(2)
    for i, beta in enumerate([0.1, 0.5, 1.0]):
        s = torch.rand(6, generator=gen) * 10
        s_ref = torch.rand(6, generator=gen) * 10
        got, err = _run(name, fn, s.clone(), s_ref.clone(), beta)
        if err is not None:
            return err
        bad = _compare(name, got, npo_loss(s, s_ref, beta), atol=1e-5, what=f"case {i} (beta={beta}) loss")
        if bad is not None:
            if abs(float(got) - float(npo_loss(s_ref, s, beta))) < 1e-5:
                bad += " The difference inside the sigmoid has the wrong sign: it is S_θ - S_ref."
            elif abs(float(got) - float(npo_loss(s, s_ref, beta)) * beta / 2) < 1e-5:
                bad += " Did you forget the 2/β factor in front?"
            return _report(name, False, bad)
    # a property: the loss falls as the forget NLL rises (pushing the model away from the answer)
    s = torch.tensor([1.0, 2.0])
    lo, hi = fn(s + 5, s, 0.1), fn(s, s, 0.1)
    if not float(lo) < float(hi):
        return _report(name, False, "the loss should decrease when S_θ grows above S_ref.")
    return _report(name, True, "matches the reference for 3 values of beta, and falls as S_θ grows.")


# ----------------------------------------------------------------------------------------------
# Notebook 02
# ----------------------------------------------------------------------------------------------
def check_krs(fn) -> CheckResult:
    """fn(original_logits, patched_logits, unlearned_logits, answer_mask) -> per-row KRS, as
    :func:`unlearn_utils.patching.knowledge_recovery_score`."""
    from .patching import knowledge_recovery_score

    name = "krs"
    gen = torch.Generator().manual_seed(3)
    o = torch.randn(4, 5, 7, generator=gen)
    u = o + torch.randn(4, 5, 7, generator=gen)
    p = o + 0.5 * (u - o) + 0.1 * torch.randn(4, 5, 7, generator=gen)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 2:4] = True
    mask[3, 1] = True
    got, err = _run(name, fn, o.clone(), p.clone(), u.clone(), mask.clone())
    if err is not None:
        return err
    want = knowledge_recovery_score(o, p, u, mask)
    bad = _compare(name, got, want, atol=1e-5, what="KRS per row")
    if bad is not None:
        full = knowledge_recovery_score(o, p, u, torch.ones_like(mask))
        if torch.as_tensor(got).shape == full.shape and torch.allclose(torch.as_tensor(got).float(), full, atol=1e-5):
            bad += " It matches the KRS over ALL positions: average only over the answer positions (the mask)."
        return _report(name, False, bad)
    # properties: patched == original -> 1, patched == unlearned -> 0
    ones, _ = _run(name, fn, o, o, u, mask)
    zeros, _ = _run(name, fn, o, u, u, mask)
    if ones is None or zeros is None or not torch.allclose(torch.as_tensor(ones).float(), torch.ones(4), atol=1e-5) \
            or not torch.allclose(torch.as_tensor(zeros).float(), torch.zeros(4), atol=1e-5):
        return _report(name, False, "KRS should be 1 when the patch restores the original and 0 when it changes "
                                    "nothing.")
    return _report(name, True, "matches the reference, with KRS = 1 for a full restore and 0 for no effect.")


def check_depth(fn) -> CheckResult:
    """fn(d1, d2, tau) -> one question's depth score from its per-layer drops (1-D tensors over layers), NaN when no
    layer has d1 > tau, as :func:`unlearn_utils.patching.depth_from_drops`."""
    from .patching import LayerDrops, depth_from_drops

    name = "depth"
    gen = torch.Generator().manual_seed(5)
    d1 = torch.rand(6, 5, generator=gen) * 0.4
    d1[0, :3] = 0.01  # two layers above tau only
    d2 = d1 * (torch.rand(6, 5, generator=gen) * 1.6 - 0.3)  # ratios from -0.3 to 1.3: both clips matter
    want = depth_from_drops(LayerDrops(torch.zeros(6), d1), LayerDrops(torch.zeros(6), d2), 0.05).per_question
    got = []
    for i in range(6):
        value, err = _run(name, fn, d1[i].clone(), d2[i].clone(), 0.05)
        if err is not None:
            return err
        got.append(float(value))
    bad = _compare(name, torch.tensor(got), want, atol=1e-5, what="depth per question")
    if bad is not None:
        unclipped = [float((d1[i] * (d2[i] / d1[i]))[d1[i] > 0.05].sum() / d1[i][d1[i] > 0.05].sum()) for i in range(6)]
        if np.allclose(got, unclipped, atol=1e-5):
            bad += " It matches the unclipped ratio: clip d2 / d1 to [0, 1] (a layer cannot be more than erased)."
        return _report(name, False, bad)
    none, err = _run(name, fn, torch.full((5,), 0.01), torch.ones(5), 0.05)
    if err is not None:
        return err
    if none is None or not np.isnan(float(none)):
        return _report(name, False, f"with no layer above tau the score is undefined: return NaN, not {none!r}.")
    return _report(name, True, "matches the reference: d1-weighted, clipped, over the layers above tau; NaN when "
                               "no layer carries the answer.")


def _tiny_pair():
    """A tiny random Llama and a copy whose layer weights are perturbed, with a tokenizer-free input batch."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=2)
    a = LlamaForCausalLM(cfg).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        for n, p in b.named_parameters():
            if ".layers." in n:
                p.add_(0.1 * torch.randn_like(p))
    return a, b


def check_patch_mlp(fn) -> CheckResult:
    """fn(unlearned, original_coefficients, layer, input_ids, attention_mask) -> logits of the unlearned model whose
    layer-``layer`` MLP coefficients (the input of ``mlp.down_proj``) are replaced by ``original_coefficients``."""
    from .patching import TeacherForced, cache_activations, run_patches

    name = "patch_mlp"
    a, b = _tiny_pair()
    ids = torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(4))
    att = torch.ones_like(ids)
    tf = TeacherForced(ids, att, torch.ones_like(ids, dtype=torch.bool), [""] * 3, [""] * 3)
    cache = cache_activations(a, None, tf)
    for layer in (0, 2):
        want = run_patches(b, None, tf, cache, [([layer], "mlp")], batched=False)[0]
        got, err = _run(name, fn, b, cache["mlp"][layer].clone(), layer, ids, att)
        if err is not None:
            return err
        bad = _compare(name, got, want, atol=1e-4, what=f"logits with layer {layer} patched")
        if bad is not None:
            unpatched = b(input_ids=ids, attention_mask=att).logits
            if torch.allclose(torch.as_tensor(got).float(), unpatched, atol=1e-5):
                bad += " They equal the UNPATCHED logits: the assignment did not reach the model."
            return _report(name, False, bad)
    return _report(name, True, "your patched logits match the kit's nnsight patch at layers 0 and 2.")


# ----------------------------------------------------------------------------------------------
# Notebook 03
# ----------------------------------------------------------------------------------------------
def check_vocab_projection(fn) -> CheckResult:
    """fn(unembedding [vocab, d], vector [d], k) -> the ids of the k tokens the vector promotes most, best first."""
    name = "vocab_projection"
    gen = torch.Generator().manual_seed(5)
    E = torch.randn(30, 8, generator=gen)
    for i, k in enumerate((1, 5, 30)):
        v = torch.randn(8, generator=gen)
        got, err = _run(name, fn, E.clone(), v.clone(), k)
        if err is not None:
            return err
        want = (E @ v).topk(k).indices
        got_t = torch.as_tensor(got)
        if got_t.shape != want.shape:
            return _report(name, False, f"case {i}: expected {k} token ids, got shape {tuple(got_t.shape)}.")
        if torch.equal(got_t, (E @ -v).topk(k).indices) and k < 30:
            return _report(name, False, f"case {i}: these are the tokens the vector SUPPRESSES: "
                                        "take the largest logits.")
        if not torch.equal(got_t.long(), want):
            if set(got_t.tolist()) == set(want.tolist()):
                return _report(name, False, f"case {i}: right tokens, wrong order: sort them best first.")
            return _report(name, False, f"case {i} (k={k}): got ids {got_t.tolist()[:5]}, "
                                        f"expected {want.tolist()[:5]}. "
                                        "Project with unembedding @ vector (one logit per vocabulary token).")
    return _report(name, True, "your projection picks the same top-k tokens, in the same order.")


def check_jaccard(fn) -> CheckResult:
    """fn(a, b) -> |A ∩ B| / |A ∪ B| for two collections of tokens (duplicates ignored; two empty sets -> 1)."""
    from .concepts import jaccard

    name = "jaccard"
    cases = [(["a", "b", "c"], ["b", "c", "d"]), (["x"], ["y"]), (["a", "a", "b"], ["a", "b"]),
             (list("abcdef"), list("abc")), ([], [])]
    for i, (a, b) in enumerate(cases):
        if not a and not b:
            try:
                fn([], [])
            except ZeroDivisionError:
                return _report(name, False, "two empty lists raised ZeroDivisionError. Two empty sets are "
                                            "identical: return 1.0 (and avoid dividing by zero).")
            except Exception:  # noqa: BLE001 - reported by _run below
                pass
        got, err = _run(name, fn, list(a), list(b))
        if err is not None:
            return err
        want = jaccard(a, b)
        bad = _compare(name, float(got) if got is not None else float("nan"), want, atol=1e-9,
                       what=f"case {i} {a} vs {b}")
        if bad is not None:
            if i == 2:
                bad += " Duplicates must not count twice: compare sets."
            if i == 4:
                bad += " Two empty sets are identical: return 1.0 (and avoid dividing by zero)."
            return _report(name, False, bad)
    return _report(name, True, "matches the reference, including duplicates and empty sets.")


# ----------------------------------------------------------------------------------------------
# Notebook 05
# ----------------------------------------------------------------------------------------------
def check_rtn_quantize(fn) -> CheckResult:
    """fn(w [out, in], bits, group_size) -> symmetric (absmax) round-to-nearest quantize-dequantize, per group of
    ``group_size`` consecutive inputs of a row, as :func:`unlearn_utils.quantize.quantize_tensor` with the grid
    notebook 05's exercise states, step = max|w| / (2^(bits-1) - 1) (``step="absmax"``; the kit's default is the
    quantization paper's max|w| / 2^(bits-1))."""
    from functools import partial

    from .quantize import quantization_step as step_of
    from .quantize import quantize_tensor as reference

    quantize_tensor = partial(reference, step="absmax")
    quantization_step = partial(step_of, step="absmax")

    name = "rtn_quantize"
    gen = torch.Generator().manual_seed(6)
    for i, (shape, bits, g) in enumerate((((4, 16), 4, 8), ((3, 32), 3, 16), ((2, 8), 8, 8))):
        w = torch.randn(*shape, generator=gen)
        got, err = _run(name, fn, w.clone(), bits, g)
        if err is not None:
            return err
        want = quantize_tensor(w, bits, g)
        bad = _compare(name, got, want, atol=1e-5, what=f"case {i} ({bits} bits, group {g})")
        if bad is not None:
            got_t = torch.as_tensor(got).float()
            if got_t.shape == w.shape and torch.allclose(got_t, quantize_tensor(w, bits, None), atol=1e-5):
                bad += " It matches ONE grid per row: use one absmax per group of `group_size` inputs."
            elif got_t.shape == w.shape and ((got_t - w).abs() > 0.5 * quantization_step(w, bits, g) + 1e-6).any():
                bad += " Some weights moved by more than half a step: round to the nearest level, do not floor."
            return _report(name, False, bad)
    return _report(name, True, "matches the reference; every weight is within half a step of where it was.")


def check_recovery_rate(fn) -> CheckResult:
    """fn(attacked_unlearned, attacked_retain, original) -> (attacked_unlearned - attacked_retain) /
    (original - attacked_retain): the share of the floor-to-ceiling gap that the attack closes."""
    from .relearn import recovery_above_floor

    name = "recovery_rate"
    for i, args in enumerate(((0.6, 0.1, 0.9), (0.1, 0.1, 1.0), (0.05, 0.1, 0.8), (1.0, 0.2, 1.0))):
        got, err = _run(name, fn, *args)
        if err is not None:
            return err
        want = recovery_above_floor(*args)
        bad = _compare(name, float(got), want, atol=1e-9, what=f"case {i} {args}")
        if bad is not None:
            if abs(float(got) - args[0] / args[2]) < 1e-9:
                bad += " That is the paper's plain ratio (unlearned / original): subtract the retain-model floor."
            return _report(name, False, bad)
    return _report(name, True, "matches the reference: 0 at the floor, 1 at the ceiling, negative below the floor.")


# ----------------------------------------------------------------------------------------------
# Notebook 04
# ----------------------------------------------------------------------------------------------
def check_loreft_edit(fn) -> CheckResult:
    """fn(h [..., d], R [r, d], W [r, d], b [r]) -> the edit Rᵀ(W h + b − R h) (same shape as h), as
    :func:`unlearn_utils.grun.loreft_edit`."""
    from .grun import loreft_edit

    name = "loreft_edit"
    gen = torch.Generator().manual_seed(4)
    for i, (shape, r) in enumerate((((5, 8), 2), ((2, 3, 16), 4), ((1, 6), 6))):
        d = shape[-1]
        h = torch.randn(*shape, generator=gen)
        R = torch.linalg.qr(torch.randn(d, r, generator=gen))[0].T.contiguous()  # orthonormal rows
        W, b = torch.randn(r, d, generator=gen), torch.randn(r, generator=gen)
        got, err = _run(name, fn, h.clone(), R.clone(), W.clone(), b.clone())
        if err is not None:
            return err
        want = loreft_edit(h, R, W, b)
        bad = _compare(name, got, want, atol=1e-4, what=f"case {i} (h {tuple(shape)}, rank {r})")
        if bad is not None:
            got_t = torch.as_tensor(got).float()
            if got_t.shape == h.shape:
                if torch.allclose(got_t, h + want, atol=1e-4):
                    bad += " That is h + edit: return the edit alone (the module adds h and the gate)."
                elif torch.allclose(got_t, (h @ W.T + b) @ R, atol=1e-4):
                    bad += " Subtract R h: the edit REPLACES h's coordinates in R's subspace, it does not add to them."
                elif torch.allclose(got_t, (h @ W.T - h @ R.T) @ R, atol=1e-4):
                    bad += " The bias b is missing."
            return _report(name, False, bad)
    return _report(name, True, "matches the reference; the edit lies in the row space of R.")


def check_gated_loss(fn) -> CheckResult:
    """fn(forget_term, retain_term, forget_gates, retain_gates, gate_weight) -> forget_term + retain_term +
    gate_weight · BCE(gates; forget → 1, retain → 0), as :func:`unlearn_utils.grun.gated_loss`."""
    from .grun import gated_loss

    name = "gated_loss"
    gen = torch.Generator().manual_seed(5)
    for i, (nf, nr, lam) in enumerate(((4, 4, 10.0), (3, 7, 1.0), (6, 2, 0.5))):
        fg, rg = torch.rand(nf, generator=gen) * 0.98 + 0.01, torch.rand(nr, generator=gen) * 0.98 + 0.01
        ft, rt = torch.tensor(-2.5 + i), torch.tensor(0.7 * (i + 1))
        got, err = _run(name, fn, ft, rt, fg.clone(), rg.clone(), lam)
        if err is not None:
            return err
        want = gated_loss(ft, rt, fg, rg, lam)
        bad = _compare(name, torch.as_tensor(got).reshape(()), want, atol=1e-4, what=f"case {i}")
        if bad is not None:
            import torch.nn.functional as F

            g = float(torch.as_tensor(got))
            flipped = ft + rt + lam * F.binary_cross_entropy(torch.cat([fg, rg]),
                                                             torch.cat([torch.zeros(nf), torch.ones(nr)]))
            separate = ft + rt + lam * (F.binary_cross_entropy(fg, torch.ones(nf))
                                        + F.binary_cross_entropy(rg, torch.zeros(nr)))
            if abs(g - float(flipped)) < 1e-4:
                bad += (" The gate targets are flipped: forget prompts should open the gate (1), "
                        "retain ones close it (0).")
            elif abs(g - float(ft + rt)) < 1e-4:
                bad += " The gate term is missing."
            elif abs(g - float(separate)) < 1e-4 and nf != nr:
                bad += " Average the BCE over ALL gate values together, not per set and then added."
            return _report(name, False, bad)
    return _report(name, True, "matches the reference: the gate learns to open on forget prompts only.")


# ----------------------------------------------------------------------------------------------
# Notebook 06
# ----------------------------------------------------------------------------------------------
def check_share_back(fn) -> CheckResult:
    """fn(probed, unlearned, original) -> (probed - unlearned) / (original - unlearned): the share of what
    unlearning removed that a probe brings back; NaN when unlearning removed nothing."""
    import math

    from .audit import share_back

    name = "share_back"
    for i, args in enumerate(((0.71, 0.02, 1.0), (0.02, 0.02, 1.0), (0.0, 0.1, 0.9), (0.5, 0.5, 0.5))):
        got, err = _run(name, fn, *args)
        if err is not None:
            return err
        want = share_back(*args)
        if math.isnan(want):
            if got is None or not math.isnan(float(got)):
                return _report(name, False, f"case {i} {args}: unlearning removed nothing (original = unlearned), "
                                            f"so the share is undefined: return float('nan'), not {got!r}.")
            continue
        bad = _compare(name, float(got), want, atol=1e-9, what=f"case {i} {args}")
        if bad is not None:
            if abs(float(got) - args[0] / args[2]) < 1e-9:
                bad += " That is probed / original: measure from the unlearned model's level, not from zero."
            elif abs(float(got) - (args[0] - args[1])) < 1e-9:
                bad += " Divide by what unlearning removed (original - unlearned)."
            return _report(name, False, bad)
    return _report(name, True, "matches the reference: 0 when nothing comes back, 1 when all of it does.")


def check_best_run(fn) -> CheckResult:
    """fn(history, max_forget) -> the index of the run with the highest retain accuracy among the runs whose
    forget accuracy is at most ``max_forget``; None when no run forgets enough."""
    name = "best_run"
    history = [{"forget_accuracy": 0.30, "retain_accuracy": 0.99},
               {"forget_accuracy": 0.05, "retain_accuracy": 0.80},
               {"forget_accuracy": 0.00, "retain_accuracy": 0.70},
               {"forget_accuracy": 0.10, "retain_accuracy": 0.95}]
    for max_forget, want in ((0.05, 1), (0.10, 3), (0.0, 2), (1.0, 0)):
        got, err = _run(name, fn, history, max_forget)
        if err is not None:
            return err
        if got != want:
            hint = ""
            if got == 0 and want != 0:
                hint = " Run 0 has the best retain accuracy but forgets too little: filter by forget accuracy first."
            elif got == 2 and want != 2:
                hint = " That is the run that forgets most; among the runs that forget enough, keep the most retain."
            elif want == 1 and got == 3:
                hint = " 'At most' includes the limit, but 0.10 > 0.05."
            return _report(name, False, f"with max_forget={max_forget} got {got!r}, expected {want}.{hint}")
    got, err = _run(name, fn, history, -0.1)
    if err is not None:
        return err
    if got is not None:
        return _report(name, False, f"no run has forget accuracy <= -0.1, so return None, not {got!r}.")
    return _report(name, True, "picks the most useful run among those that forget enough, and None when none does.")
