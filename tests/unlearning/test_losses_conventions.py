"""The benchmark conventions of the training losses (SimNPO's margin, RMU's tokens), by hand, and how they enter
a run's settings and its cache key."""

import math

import pytest
import torch

from unlearn_utils.unlearning import losses as L
from unlearn_utils.unlearning.methods import UnlearnConfig, cache_settings


def logsig(x):
    return math.log(1 / (1 + math.exp(-x)))


def test_simnpo_margins_agree_at_gamma_0_and_differ_by_beta_otherwise():
    s, n = torch.tensor([3.0, 1.0]), torch.tensor([2, 4])   # 1.5 and 0.25 nats per token
    code = L.simnpo_loss(s, n, beta=2.0, gamma=0.0, margin="code")
    paper = L.simnpo_loss(s, n, beta=2.0, gamma=0.0, margin="paper")
    assert torch.equal(code, paper)                          # the kit's default γ = 0: one loss, bit for bit
    assert code.item() == pytest.approx(-(2 / 2.0) * (logsig(2.0 * 1.5) + logsig(2.0 * 0.25)) / 2, rel=1e-6)
    # γ = 0.5: the code subtracts β·γ = 1.0 from the margin, the paper's equation γ = 0.5
    code = L.simnpo_loss(s, n, beta=2.0, gamma=0.5).item()
    paper = L.simnpo_loss(s, n, beta=2.0, gamma=0.5, margin="paper").item()
    assert code == pytest.approx(-(logsig(3.0 - 1.0) + logsig(0.5 - 1.0)) / 2, rel=1e-6)
    assert paper == pytest.approx(-(logsig(3.0 - 0.5) + logsig(0.5 - 0.5)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="SimNPO margin"):
        L.simnpo_loss(s, n, margin="open-unlearning")


def test_rmu_averages_over_tokens_or_over_sequences_by_hand():
    # d = 2, control 0. Row 0: one marked token, squared values 1 and 1 (mean 1); row 1: two marked tokens with
    # means (4 + 4) / 2 = 4 and (0 + 4) / 2 = 2. The retain term is 0 (hidden = reference).
    hf = torch.tensor([[[1.0, 1.0], [9.0, 9.0]], [[2.0, 2.0], [0.0, 2.0]]])
    mask = torch.tensor([[1, 0], [1, 1]])
    control = torch.zeros(2)
    hr = torch.ones(2, 2, 2)
    pooled = L.rmu_loss(hf, mask, control, hr, hr, mask, alpha=5.0).item()
    per_sequence = L.rmu_loss(hf, mask, control, hr, hr, mask, alpha=5.0, average="sequences").item()
    assert pooled == pytest.approx((1 + 4 + 2) / 3)            # every marked token of the batch
    assert per_sequence == pytest.approx((1 + (4 + 2) / 2) / 2)  # each row's mean, then the rows' (open-unlearning)
    with pytest.raises(ValueError, match="RMU average"):
        L.rmu_loss(hf, mask, control, hr, hr, mask, average="answers")


def test_new_loss_settings_leave_cached_runs_valid():
    """simnpo_margin and rmu_tokens enter a run's cache key only where they change what trains: at γ = 0 both SimNPO
    margins are one loss, and rmu_tokens="all" is how RMU trained before; so every run cached before keeps its key."""
    default = UnlearnConfig.for_method("simnpo")
    assert default.simnpo_margin == "code" and default.rmu_tokens == "all"
    key = cache_settings(default)
    assert "simnpo_margin" not in key and "rmu_tokens" not in key and "only_modules" not in key
    assert cache_settings(UnlearnConfig.for_method("simnpo", simnpo_margin="paper")) == key   # γ = 0: the same loss
    with_gamma = cache_settings(UnlearnConfig.for_method("simnpo", gamma=0.5))
    assert with_gamma["simnpo_margin"] == "code"               # never confused with a run of the paper's margin
    assert cache_settings(UnlearnConfig.for_method("rmu", rmu_tokens="answer"))["rmu_tokens"] == "answer"
    with pytest.raises(ValueError, match="simnpo_margin must be one of"):
        UnlearnConfig.for_method("simnpo", simnpo_margin="open-unlearning")
    with pytest.raises(ValueError, match="rmu_tokens must be one of"):
        UnlearnConfig.for_method("rmu", rmu_tokens="prompt")


def test_rmu_tokens_answer_steers_the_answer_tokens_only(tiny):
    """rmu_tokens="answer" (open-unlearning) reads the hidden states at the answer tokens; the default every token."""
    from unlearn_utils.unlearning import unlearn

    world, model, tok = tiny
    forget, retain = world.facts("forget05", "trained"), world.facts("retain", "trained", "forget05")
    _, every = unlearn(model, tok, forget, retain, "rmu", steps=2, batch_size=8, progress=False)
    _, answer = unlearn(model, tok, forget, retain, "rmu", steps=2, batch_size=8, rmu_tokens="answer",
                        progress=False)
    assert every.attrs["config"]["rmu_tokens"] == "all" and answer.attrs["config"]["rmu_tokens"] == "answer"
    assert every["loss"].iloc[0] != pytest.approx(answer["loss"].iloc[0])
