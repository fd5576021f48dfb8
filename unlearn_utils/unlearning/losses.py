"""Unlearning losses: one readable function per objective, its formula in the docstring.

Notation: x_f is a forget example (prompt + answer), x_r a retain example; only answer tokens carry labels.
NLL_θ(x) is the mean token negative log-likelihood of the labelled tokens; S_θ(x) is the *summed* NLL of one
sequence (its negative log-probability), |y| its number of labelled tokens; θ_ref is the frozen original model.
Every function returns a scalar to *minimise*.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Building blocks on logits (pure functions, easy to check by hand)
# ----------------------------------------------------------------------------------------------
def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of the labelled tokens and the label mask, shifted so logits[t] predicts labels[t+1].

    Returns (nll [B, T-1] with zeros where unlabelled, mask [B, T-1]).
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.clamp_min(0).reshape(-1),
                          reduction="none").view(labels.shape)
    return nll * mask, mask


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL_θ(x): mean over all labelled tokens of the batch (the usual language-modelling loss)."""
    nll, mask = token_nll(logits, labels)
    return nll.sum() / mask.sum().clamp_min(1)


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S_θ(x) per sequence (summed NLL of its labelled tokens) and |y| (how many there are)."""
    nll, mask = token_nll(logits, labels)
    return nll.sum(-1), mask.sum(-1)


def ga_loss(forget_logits: torch.Tensor, forget_labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: L = -NLL_θ(x_f). Minimising it pushes the forget answers' likelihood down, without limit."""
    return -mean_nll(forget_logits, forget_labels)


def npo_loss(seq_nll: torch.Tensor, ref_seq_nll: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024):

    L = -(2/β) · mean_i log σ( β · (S_θ(x_i) - S_ref(x_i)) )

    Like GA while the model still resembles the reference, but the push fades once S_θ ≫ S_ref (bounded).
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (seq_nll - ref_seq_nll)).mean()


def simnpo_loss(seq_nll: torch.Tensor, n_tokens: torch.Tensor, beta: float = 2.5, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): NPO without a reference model, length-normalised, with a margin γ:

    L = -(2/β) · mean_i log σ( β · S_θ(x_i)/|y_i| - γ )
    """
    return -(2.0 / beta) * F.logsigmoid(beta * seq_nll / n_tokens.clamp_min(1) - gamma).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) of the next-token distributions, averaged over labelled positions (keeps retain behaviour)."""
    logits, ref_logits = logits[:, :-1].float(), ref_logits[:, :-1].float()
    mask = (labels[:, 1:] != -100).float()
    kl = F.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def dpo_loss(chosen_nll: torch.Tensor, rejected_nll: torch.Tensor, ref_chosen_nll: torch.Tensor,
             ref_rejected_nll: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Direct preference optimisation with a refusal preferred over the true answer:

    L = -(2/β) · mean log σ( β · [ (S_ref(y_true) - S_θ(y_true)) ... ] ) written with log-probs as
    L = -(2/β) · mean log σ( β · [ (log π_θ(y_idk) - log π_ref(y_idk)) - (log π_θ(y_true) - log π_ref(y_true)) ] )
    where log π = -S (summed NLL). (The factor 2/β follows the unlearning papers' convention.)
    """
    margin = (ref_chosen_nll - chosen_nll) - (ref_rejected_nll - rejected_nll)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def rmu_loss(forget_hidden: torch.Tensor, forget_mask: torch.Tensor, control: torch.Tensor,
             retain_hidden: torch.Tensor, ref_retain_hidden: torch.Tensor, retain_mask: torch.Tensor,
             alpha: float = 1.0) -> torch.Tensor:
    """Representation misdirection (Li et al. 2024, WMDP):

    L = mean_t ‖h_θ(x_f)_t - c·u‖² + α · mean_t ‖h_θ(x_r)_t - h_ref(x_r)_t‖²

    h = one layer's residual stream, u a fixed random unit vector, c the steering coefficient (in ``control = c·u``).
    """
    fm, rm = forget_mask.float()[..., None], retain_mask.float()[..., None]
    d = forget_hidden.shape[-1]
    f = (((forget_hidden.float() - control) ** 2) * fm).sum() / (fm.sum() * d).clamp_min(1)
    r = (((retain_hidden.float() - ref_retain_hidden.float()) ** 2) * rm).sum() / (rm.sum() * d).clamp_min(1)
    return f + alpha * r
