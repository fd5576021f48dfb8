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
    assert checks.check_min_k(min_k_score).passed

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
