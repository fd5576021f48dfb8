import json

import pytest

from unlearn_utils.world import ATTRIBUTES, TEMPLATES, load_world_jsonl, make_world


@pytest.fixture(scope="module")
def world():
    return make_world(seed=0, n_people=200)


def test_size_and_attributes(world):
    assert len(world.trained_people) == 200
    assert len(world.holdout_people) == 40
    assert len(ATTRIBUTES) >= 6
    assert all(len(TEMPLATES[a]) >= 4 for a in ATTRIBUTES)
    names = [p["name"] for p in world.people]
    assert len(set(names)) == len(names)
    codes = [p["code"] for p in world.people]
    assert len(set(codes)) == len(codes), "codes are unique per person"


def test_topics_have_own_words(world):
    assert len(world.topics) >= 20
    seen = {}
    for t in world.topics:
        assert len(t["words"]) >= 8, t["name"]
        assert len(t["sentences"]) >= 5
        for w in t["words"]:
            assert w not in seen, f"{w} in both {seen.get(w)} and {t['name']}"
            seen[w] = t["name"]


def test_heldout_phrasings_are_seen_with_other_people(world):
    rows = world.fact_rows()
    for attr in ATTRIBUTES:
        for k in range(len(TEMPLATES[attr])):
            trained_with = {r["person"] for r in rows
                            if r["attribute"] == attr and r["phrasing"] == k and r["trained_phrasing"]}
            assert len(trained_with) > 50, (attr, k)
    # each trained person has exactly one held-out phrasing per attribute, and it is absent from the training text
    texts = set(world.training_texts())
    para = [r for r in rows if not r["trained_phrasing"] and not r["holdout_person"]]
    assert len(para) == 200 * len(ATTRIBUTES)
    for r in para[:200]:
        assert r["prompt"] + " " + r["answer"] + ("" if r["is_question"] else " .") not in texts


def test_splits_nested_disjoint(world):
    f1, f5, f10 = (set(world.forget_people(s)) for s in ("forget01", "forget05", "forget10"))
    assert (len(f1), len(f5), len(f10)) == (2, 10, 20)
    assert f1 <= f5 <= f10
    assert not f10 & set(world.holdout_people)
    assert not set(world.retain_people("forget05")) & f5
    assert len(world.retain_people("forget05")) == 190


def test_training_text_excludes_people(world):
    forget = world.forget_people("forget05")
    texts = " ".join(world.training_texts(exclude_people=forget))
    assert all(name not in texts for name in forget)
    assert all(name not in " ".join(world.training_texts()) for name in world.holdout_people)


def test_tv_split_shares_no_fact(world):
    t, v = world.tv_split("forget05")
    assert len(t) and len(v)
    t_facts = {(r["person"], r["attribute"]) for r in t}
    v_facts = {(r["person"], r["attribute"]) for r in v}
    assert not t_facts & v_facts
    assert {p for p, _ in t_facts} == {p for p, _ in v_facts} == set(world.forget_people("forget05"))


def test_deterministic():
    a, b = make_world(seed=3, n_people=50), make_world(seed=3, n_people=50)
    assert a.fact_rows() == b.fact_rows() and a.topics == b.topics
    assert make_world(seed=4, n_people=50).fact_rows() != a.fact_rows()


def test_datasets_and_jsonl_roundtrip(world, tmp_path):
    ds = world.facts("forget05", "trained")
    assert set(ds["person"]) == set(world.forget_people("forget05"))
    world.to_jsonl(tmp_path)
    lines = (tmp_path / "facts.jsonl").read_text().splitlines()
    assert len(lines) == len(world.fact_rows()) and json.loads(lines[0])["answer"]
    again = load_world_jsonl(tmp_path)
    assert again.fact_rows() == world.fact_rows()


def test_bad_input(world, tmp_path):
    with pytest.raises(KeyError, match="Unknown split"):
        world.facts("forget50")
    with pytest.raises(KeyError, match="Unknown forget split"):
        world.forget_people("forget03")
    small = make_world(n_people=20)
    with pytest.raises(ValueError, match="too few"):
        small.forget_people("forget01")
    with pytest.raises(ValueError):
        make_world(n_people=1)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_world_jsonl(tmp_path / "nothing")


def test_shipped_data_matches_generator():
    """data/world is what `make data` writes from the default seed; it must not drift from the code."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "data" / "world"
    shipped = load_world_jsonl(folder)
    assert shipped.fact_rows() == make_world(seed=0, n_people=200).fact_rows()


def test_check_splits(world):
    from unlearn_utils.world import check_splits

    forget, retain = world.facts("forget"), world.facts("retain")
    check_splits(forget=forget, retain=retain)
    with pytest.raises(ValueError, match="forget split is empty"):
        check_splits(forget=forget.select([]), retain=retain)
    with pytest.raises(ValueError, match="overlap"):
        check_splits(forget=forget, retain=world.facts("forget10"))
    with pytest.raises(ValueError, match="overlap: 1 examples"):
        check_splits(forget=["a b", "c"], retain=["c", "d"])
