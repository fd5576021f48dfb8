"""Exercise checks: test a learner's function against the kit's reference on small inputs.

Each ``check_*`` runs the learner's function on a few hand-made cases, prints a clear pass or a
message that says what is wrong (shape, sign, value off by how much, a likely off-by-one), and
returns a :class:`CheckResult` that a grader can collect. Checks never raise on a wrong answer; they
do let ``NotImplementedError`` through so an untouched stub is reported as "not attempted".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

RESULTS: list["CheckResult"] = []  # every check run in this process, for the autograder


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


def _compare(name: str, got, want, atol: float = 1e-5, what: str = "value") -> CheckResult | None:
    """None when close; else a failing result saying how it differs."""
    g = torch.as_tensor(np.asarray(got, dtype=float) if not torch.is_tensor(got) else got.detach().float().cpu())
    w = torch.as_tensor(np.asarray(want, dtype=float) if not torch.is_tensor(want) else want.detach().float().cpu())
    if g.shape != w.shape:
        return _report(name, False, f"{what} has shape {tuple(g.shape)}, expected {tuple(w.shape)}.")
    if not torch.isfinite(g).all():
        return _report(name, False, f"{what} contains NaN or inf.")
    diff = (g - w).abs().max().item()
    if diff <= atol:
        return None
    if torch.allclose(g, -w, atol=atol):
        return _report(name, False, f"{what} has the wrong sign (got {g.flatten()[:3].tolist()}, "
                                    f"expected {w.flatten()[:3].tolist()}).")
    return _report(name, False, f"{what} is off by up to {diff:.4g} (got {g.flatten()[:3].tolist()}, "
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
    """fn(token_logprobs: 1-D array, k: float) -> float, as :func:`unlearn_utils.evaluate.min_k_score`."""
    from .evaluate import min_k_score

    name = "min_k_score"
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
                bad.message += " It looks like the mean of the HIGHEST log-probs; Min-K% takes the lowest."
            return bad
    return _report(name, True, f"all {len(cases)} cases agree with the reference.")
