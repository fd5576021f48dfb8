"""The unlearning methods: one :class:`Method` entry each, read by ``unlearn()``, GRUN, the lab and the tests.

A method is a forget term (what it does to the forget set), a retain term (how it keeps everything else: none,
NLL on retain answers, or KL to the original's next-token distributions) and its default settings. Adding a
method is one :func:`register` call with its forget term, a function ``term(run, batch) -> loss`` of

* ``run.logits(b)``: the trained model's logits where the losses read them (before each labelled token of ``b``);
* ``run.reference_nll(b, idx, kind)``: the frozen original's summed NLL of each row (kept after its first batch);
* ``run.config``: the run's :class:`~unlearn_utils.unlearning.methods.UnlearnConfig`;

and ``batch["forget"]``, ``batch["retain"]``, ``batch["forget_idx"]`` (the rows' indices in the forget set) and,
for a method with ``answers``, ``batch["relabelled"]``: the same forget prompts with the answers it gives them.
The terms' formulas are in :mod:`unlearn_utils.unlearning.losses`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from ..data import REFUSALS
from . import losses as L


@dataclass(frozen=True)
class Method:
    """One unlearning method.

    forget_term(run, batch) -> loss on the forget data; retain: None, "nll" or "kl" (weighted by retain_weight);
    needs_reference: the frozen original is kept in memory (KL, NPO's and DPO's reference, RMU's retain target);
    answers(forget_rows, retain_rows, seed) -> new answers for the forget prompts (refusals, random labels), trained as
    ``batch["relabelled"]``; grun: GRUN can train its module with this forget term (it reads only logits).
    """

    name: str
    summary: str
    forget_term: Callable
    retain: str | None = None
    defaults: dict = field(default_factory=dict)
    needs_reference: bool = False
    answers: Callable[[list[dict], list[dict], int], list[str]] | None = None
    grun: bool = False


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the table (its name must be new, its retain term one of None, "nll", "kl")."""
    if method.name in METHODS:
        raise ValueError(f"An unlearning method named {method.name!r} is already registered.")
    if method.retain not in (None, "nll", "kl"):
        raise ValueError(f"retain must be None, 'nll' or 'kl', got {method.retain!r}.")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name`` (a clear error listing the others if there is none)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"Unknown unlearning method {name!r}. Choose one of: {', '.join(METHODS)}.") from None


# ----------------------------------------------------------------------------------------------
# Forget terms
# ----------------------------------------------------------------------------------------------
def gradient_ascent(run, b):
    """-NLL of the forget answers (:func:`losses.ga_loss`)."""
    f = b["forget"]
    return L.ga_loss(run.logits(f), f["answer_labels"])


def npo(run, b):
    """NPO against the frozen reference (:func:`losses.npo_loss`)."""
    f = b["forget"]
    s, _ = L.sequence_nll(run.logits(f), f["answer_labels"])
    return L.npo_loss(s, run.reference_nll(f, b["forget_idx"], "forget"), run.config.beta)


def simnpo(run, b):
    """Length-normalised NPO without a reference (:func:`losses.simnpo_loss`)."""
    f = b["forget"]
    s, n = L.sequence_nll(run.logits(f), f["answer_labels"])
    return L.simnpo_loss(s, n, run.config.beta, run.config.gamma, run.config.simnpo_margin)


def relabelled_nll(run, b):
    """NLL of the new answers the method gives the forget prompts (refusals, random labels)."""
    r = b["relabelled"]
    return L.mean_nll(run.logits(r), r["answer_labels"])


def refusal_dpo(run, b):
    """DPO preferring the refusal over the true answer (:func:`losses.dpo_loss`)."""
    c, rej = b["relabelled"], b["forget"]
    s_c, _ = L.sequence_nll(run.logits(c), c["answer_labels"])
    s_r, _ = L.sequence_nll(run.logits(rej), rej["answer_labels"])
    return L.dpo_loss(s_c, s_r, run.reference_nll(c, b["forget_idx"], "refusal"),
                      run.reference_nll(rej, b["forget_idx"], "forget"), run.config.beta)


def representation_misdirection(run, b):
    """RMU: the steered layer's forget activations toward a random direction, retain ones kept (its own retain
    term, :func:`losses.rmu_loss`)."""
    return run.rmu.loss(run.model, b["forget"], b["retain"])


# ----------------------------------------------------------------------------------------------
# New answers for the forget prompts
# ----------------------------------------------------------------------------------------------
def refusals(forget_rows: list[dict], retain_rows: list[dict], seed: int) -> list[str]:
    """A refusal ("I do not know .", ...) drawn for each forget prompt."""
    rng = random.Random(seed)
    return [rng.choice(REFUSALS) for _ in forget_rows]


def random_labels(forget_rows: list[dict], retain_rows: list[dict], seed: int) -> list[str]:
    """For each forget prompt, the answer of a random retain question of the same kind (the same ``attribute``
    where rows have one, else any): fluent, and wrong for this prompt (Yao et al.'s "random responses from normal
    data"). Answers drawn from the forget set itself would not do: each is another forget row's true answer."""
    rng = random.Random(seed)
    pools: dict = {}
    for r in retain_rows:
        if "answer" in r:
            pools.setdefault(r.get("attribute"), []).append(str(r["answer"]))
    every = [a for pool in pools.values() for a in pool]
    out = []
    for r in forget_rows:
        wrong = [a for a in pools.get(r.get("attribute"), every) if a != str(r["answer"])]
        wrong = wrong or [a for a in every if a != str(r["answer"])]
        if not wrong:
            raise ValueError("random_labels draws wrong answers from the retain set's answers: it needs retain "
                             "rows with an 'answer' that differs from the forget answers.")
        out.append(rng.choice(wrong))
    return out


# ----------------------------------------------------------------------------------------------
# The table. Defaults fit the world model (6 layers, width 128), chosen by a small sweep over lr {1e-4, 3e-4, 1e-3}
# and steps {60, 120, 200} (benchmarks/RESULTS.md); a real model takes its preset (unlearn_utils.models.preset).
# ----------------------------------------------------------------------------------------------
register(Method("ga", "gradient ascent on the forget set", gradient_ascent, None,
                # no utility constraint: GA over-unlearns within a few dozen steps (the point notebook 01 makes)
                dict(lr=3e-4, steps=60)))
register(Method("grad_diff", "GA + NLL on retain data (gradient difference)", gradient_ascent, "nll",
                dict(lr=3e-4, steps=200, retain_weight=1.0), grun=True))
register(Method("ga_kl", "GA + KL to the original model on retain data", gradient_ascent, "kl",
                dict(lr=3e-4, steps=200, retain_weight=1.0), needs_reference=True))
register(Method("npo", "negative preference optimisation", npo, None,
                dict(lr=3e-4, steps=200, beta=0.1), needs_reference=True, grun=True))
register(Method("npo_gd", "NPO + NLL on retain data", npo, "nll",
                dict(lr=3e-4, steps=200, beta=0.1, retain_weight=1.0), needs_reference=True))
register(Method("npo_kl", "NPO + KL to the original on retain data", npo, "kl",
                dict(lr=3e-4, steps=200, beta=0.1, retain_weight=1.0), needs_reference=True))
register(Method("simnpo", "reference-free, length-normalised NPO + retain NLL (as in its paper's TOFU runs)",
                simnpo, "nll", dict(lr=3e-4, steps=200, beta=2.5, gamma=0.0, retain_weight=1.0)))
register(Method("idk", "answer the forget prompts with a refusal (\"I do not know .\") + retain NLL",
                relabelled_nll, "nll", dict(lr=3e-4, steps=200, retain_weight=1.0), answers=refusals, grun=True))
register(Method("idk_dpo", "DPO preferring the refusal over the true answer + retain NLL", refusal_dpo, "nll",
                dict(lr=3e-4, steps=200, beta=0.1, retain_weight=1.0), needs_reference=True, answers=refusals))
register(Method("rmu", "push one layer's forget activations toward a random direction, keep retain ones",
                representation_misdirection, None,
                dict(lr=1e-3, steps=200, layer=None, steering_coeff=4.0, retain_weight=10.0), needs_reference=True))
register(Method("random_labels", "fine-tune the forget prompts on retain answers of the same kind + retain NLL",
                relabelled_nll, "nll", dict(lr=3e-4, steps=200, retain_weight=1.0), answers=random_labels, grun=True))
