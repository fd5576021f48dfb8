"""Unlearning losses: one readable function per objective, its formula in the docstring.

Notation: x_f is a forget example (prompt + answer), x_r a retain example; only answer tokens carry labels.
NLL_θ(x) is the mean token negative log-likelihood of the labelled tokens; S_θ(x) is the *summed* NLL of one
sequence (its negative log-probability), |y| its number of labelled tokens; θ_ref is the frozen original model.
Every function returns a scalar to *minimise*. Means over the batch go through :mod:`unlearn_utils.distributed`
(``D.mean``, ``D.ratio``): plain means in one process, means over the global batch under several.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed as D


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
    return D.ratio(nll.sum(), mask.sum())


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
    return -(2.0 / beta) * D.mean(F.logsigmoid(beta * (seq_nll - ref_seq_nll)))


SIMNPO_MARGINS = ("code", "paper")


def simnpo_loss(seq_nll: torch.Tensor, n_tokens: torch.Tensor, beta: float = 2.5, gamma: float = 0.0,
                margin: str = "code") -> torch.Tensor:
    """SimNPO (Fan et al. 2024): NPO without a reference model, length-normalised, with a margin γ.

    ``margin="code"`` (default), as the SimNPO authors' released code (OPTML-Group/Unlearn-Simple) and
    open-unlearning compute it, γ inside the scaling:

    L = -(2/β) · mean_i log σ( β · (S_θ(x_i)/|y_i| - γ) )

    ``margin="paper"``, the paper's equation, γ outside it:

    L = -(2/β) · mean_i log σ( β · S_θ(x_i)/|y_i| - γ )

    The two agree at γ = 0 (the kit's default) and differ by a factor β on the margin otherwise: a γ tuned for one
    form is β times too large or too small in the other.
    """
    per_token = seq_nll / n_tokens.clamp_min(1)
    if margin == "code":
        return -(2.0 / beta) * D.mean(F.logsigmoid(beta * (per_token - gamma)))
    if margin == "paper":
        return -(2.0 / beta) * D.mean(F.logsigmoid(beta * per_token - gamma))
    raise ValueError(f"Unknown SimNPO margin {margin!r}: choose one of {SIMNPO_MARGINS}.")


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) of the next-token distributions, averaged over labelled positions (keeps retain behaviour)."""
    logits, ref_logits = logits[:, :-1].float(), ref_logits[:, :-1].float()
    mask = (labels[:, 1:] != -100).float()
    kl = F.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    return D.ratio((kl * mask).sum(), mask.sum())


def dpo_loss(chosen_nll: torch.Tensor, rejected_nll: torch.Tensor, ref_chosen_nll: torch.Tensor,
             ref_rejected_nll: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Direct preference optimisation with a refusal preferred over the true answer:

    L = -(2/β) · mean log σ( β · [ (S_ref(y_true) - S_θ(y_true)) ... ] ) written with log-probs as
    L = -(2/β) · mean log σ( β · [ (log π_θ(y_idk) - log π_ref(y_idk)) - (log π_θ(y_true) - log π_ref(y_true)) ] )
    where log π = -S (summed NLL). (The factor 2/β follows the unlearning papers' convention.)
    """
    margin = (ref_chosen_nll - chosen_nll) - (ref_rejected_nll - rejected_nll)
    return -(2.0 / beta) * D.mean(F.logsigmoid(beta * margin))


RMU_AVERAGES = ("tokens", "sequences")


def _masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, average: str) -> torch.Tensor:
    """Mean squared difference per hidden unit at the masked positions: over all of the batch's masked tokens
    (``"tokens"``), or over each sequence's masked tokens and then over the sequences (``"sequences"``)."""
    m = mask.float()[..., None]
    squared = ((hidden.float() - target.float()) ** 2) * m
    if average == "tokens":
        return D.ratio(squared.sum(), m.sum() * hidden.shape[-1])
    if average == "sequences":
        return D.mean(squared.mean(-1).sum(-1) / m[..., 0].sum(-1).clamp_min(1))
    raise ValueError(f"Unknown RMU average {average!r}: choose one of {RMU_AVERAGES}.")


def rmu_loss(forget_hidden: torch.Tensor, forget_mask: torch.Tensor, control: torch.Tensor,
             retain_hidden: torch.Tensor, ref_retain_hidden: torch.Tensor, retain_mask: torch.Tensor,
             alpha: float = 1.0, average: str = "tokens") -> torch.Tensor:
    """Representation misdirection (Li et al. 2024, WMDP):

    L = mean_t ‖h_θ(x_f)_t - c·u‖² / d + α · mean_t ‖h_θ(x_r)_t - h_ref(x_r)_t‖² / d

    h = one layer's residual stream (width d), u a fixed random unit vector, c the steering coefficient (in
    ``control = c·u``); t runs over the positions the masks mark. ``average="tokens"`` (default) pools every marked
    token of the batch; ``"sequences"`` averages within each sequence first, then over the batch, as open-unlearning
    does. Which tokens are marked is the caller's choice: the kit marks every token of prompt and answer by default
    (``UnlearnConfig.rmu_tokens="all"``, as WMDP's RMU steers every token of its texts), open-unlearning the answer
    tokens only (``rmu_tokens="answer"``).
    """
    return (_masked_mse(forget_hidden, control.expand_as(forget_hidden), forget_mask, average)
            + alpha * _masked_mse(retain_hidden, ref_retain_hidden, retain_mask, average))
