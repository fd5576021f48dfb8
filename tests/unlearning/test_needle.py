"""Needle: noise on the chosen concept vectors, then gradient ascent that changes only those columns."""

import pytest

from unlearn_utils import concepts as C
from unlearn_utils.unlearning import needle


def test_needle_bad_input_is_a_clear_error(tiny):
    _, model, tok = tiny
    with pytest.raises(IndexError):
        needle(model, tok, (0, 999))
    with pytest.raises(ValueError, match="forget_texts"):
        needle(model, tok, (0, 1), steps=3)


def test_needle_changes_only_the_chosen_columns(tiny):
    world, model, tok = tiny
    forget, _, _ = C.topic_forget_retain(world, world.topics[0]["name"])
    out, log = needle(model, tok, [(0, 2), (1, 5)], scale=1.0, steps=3, forget_texts=[r["text"] for r in forget],
                     progress=False)
    assert len(log) == 3
    a, b = model.state_dict(), out.state_dict()
    for k in a:
        diff = (a[k] - b[k]).abs()
        if k == "model.layers.0.mlp.down_proj.weight":
            assert diff[:, 2].sum() > 0 and diff[:, [i for i in range(diff.shape[1]) if i != 2]].sum() == 0
        elif k == "model.layers.1.mlp.down_proj.weight":
            assert diff[:, 5].sum() > 0 and diff[:, [i for i in range(diff.shape[1]) if i != 5]].sum() == 0
        else:
            assert diff.sum() == 0, k
    assert all(p.requires_grad for p in out.parameters())  # flags restored
