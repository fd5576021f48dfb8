"""The method table: every entry is complete, new methods plug in with one entry, random labels are wrong labels."""

import pytest
import torch

from unlearn_utils.unlearning import DEFAULTS, METHODS, UnlearnConfig, registry, unlearn
from unlearn_utils.unlearning import losses as L


def test_every_entry_is_complete_and_the_tables_agree():
    assert METHODS == tuple(registry.METHODS) and set(DEFAULTS) == set(METHODS)
    for name, m in registry.METHODS.items():
        assert m.name == name and callable(m.forget_term) and m.retain in (None, "nll", "kl")
        assert {"lr", "steps"} <= set(m.defaults), name
        cfg = UnlearnConfig.for_method(name)
        assert cfg.lr == m.defaults["lr"] and cfg.steps == m.defaults["steps"]
        if m.retain == "kl":
            assert m.needs_reference, f"{name}: a KL retain term needs the reference model"
    with pytest.raises(ValueError, match="Unknown unlearning method 'nope'. Choose one of: ga, grad_diff"):
        registry.get_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.METHODS["ga"])


def test_a_new_method_is_one_entry(tiny, monkeypatch):
    """Register a forget term (here: GA on the forget answers' summed NLL), and unlearn() runs it."""
    world, model, tok = tiny
    forget, retain = world.facts("forget05", "trained"), world.facts("retain", "trained").select(range(60))

    def summed_ascent(run, b):
        s, _ = L.sequence_nll(run.logits(b["forget"]), b["forget"]["answer_labels"])
        return -s.mean()

    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # the test's entry goes away afterwards
    registry.register(registry.Method("summed_ga", "GA on summed NLL + retain NLL", summed_ascent, "nll",
                                      dict(lr=1e-3, steps=3)))
    out, log = unlearn(model, tok, forget, retain, "summed_ga", progress=False)
    assert len(log) == 3 and log.attrs["config"]["method"] == "summed_ga"
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), out.state_dict().values()))


def test_random_labels_are_wrong_answers_of_the_same_kind_from_the_retain_set(tiny):
    world, _, _ = tiny
    forget = world.facts("forget05", "trained").to_list()
    retain = world.facts("retain", "trained", "forget05").to_list()
    labels = registry.random_labels(forget, retain, seed=0)
    assert labels == registry.random_labels(forget, retain, seed=0)  # deterministic
    assert labels != registry.random_labels(forget, retain, seed=1)
    by_attribute = {}
    for r in retain:
        by_attribute.setdefault(r["attribute"], set()).add(r["answer"])
    for r, label in zip(forget, labels):
        assert label != r["answer"] and label in by_attribute[r["attribute"]]
    with pytest.raises(ValueError, match="retain set's answers"):
        registry.random_labels(forget[:1], [{"text": "no answers here"}], seed=0)
