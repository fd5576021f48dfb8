"""Each loss against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from unlearn_utils.unlearning import losses as L


def logsig(x):
    return math.log(1 / (1 + math.exp(-x)))


def test_token_nll_shift_and_mask():
    logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
    logits[0, 0, 2] = math.log(3.0)  # position 0 predicts token 2 with p = 3/6
    labels = torch.tensor([[-100, 2, 1]])
    nll, mask = L.token_nll(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert nll[0, 0].item() == pytest.approx(-math.log(0.5))
    assert nll[0, 1].item() == pytest.approx(math.log(4))
    assert L.mean_nll(logits, labels).item() == pytest.approx((-math.log(0.5) + math.log(4)) / 2)
    s, n = L.sequence_nll(logits, torch.tensor([[-100, -100, 1]]))
    assert s.item() == pytest.approx(math.log(4)) and n.item() == 1


def test_ga_is_minus_nll():
    logits = torch.zeros(2, 3, 5)
    labels = torch.tensor([[0, 1, 2], [0, 3, -100]])
    assert L.ga_loss(logits, labels).item() == pytest.approx(-math.log(5))


def test_npo_by_hand():
    got = L.npo_loss(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), beta=0.1).item()
    want = -(2 / 0.1) * (logsig(0.1) + logsig(0.0)) / 2
    assert got == pytest.approx(want, rel=1e-6)
    # gradient direction: increasing the forget NLL lowers the loss (the model is pushed away from the answer)
    s = torch.tensor([1.0], requires_grad=True)
    L.npo_loss(s, torch.tensor([1.0])).backward()
    assert s.grad.item() < 0


def test_simnpo_by_hand():
    # S = 3 over |y| = 2 tokens: 1.5 per token; β = 2.5, γ = 0.5
    got = L.simnpo_loss(torch.tensor([3.0]), torch.tensor([2]), beta=2.5, gamma=0.5).item()
    assert got == pytest.approx(-(2 / 2.5) * logsig(2.5 * (1.5 - 0.5)), rel=1e-6)   # SimNPO's code, open-unlearning
    paper = L.simnpo_loss(torch.tensor([3.0]), torch.tensor([2]), beta=2.5, gamma=0.5, margin="paper").item()
    assert paper == pytest.approx(-(2 / 2.5) * logsig(2.5 * 1.5 - 0.5), rel=1e-6)   # the paper's equation


def test_dpo_by_hand():
    got = L.dpo_loss(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([1.5]), torch.tensor([1.5]),
                     beta=0.1).item()
    assert got == pytest.approx(-(2 / 0.1) * logsig(0.1 * 1.0), rel=1e-6)


def test_kl_by_hand():
    ref = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    cur = torch.log(torch.tensor([[[0.9, 0.1], [0.9, 0.1]]]))
    labels = torch.tensor([[0, 1]])
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert L.kl_to_reference(cur, ref, labels).item() == pytest.approx(want, rel=1e-5)
    assert L.kl_to_reference(ref, ref, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_rmu_by_hand():
    hf = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    fmask = torch.tensor([[1, 0]])  # the padded position is ignored
    control = torch.tensor([0.0, 2.0])
    hr = torch.tensor([[[1.0, 2.0]]])
    ref = torch.tensor([[[1.0, 0.0]]])
    got = L.rmu_loss(hf, fmask, control, hr, ref, torch.tensor([[1]]), alpha=3.0).item()
    assert got == pytest.approx((1 + 1) / 2 + 3.0 * (0 + 4) / 2)
