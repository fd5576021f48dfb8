"""The ConceptVectors file format: reading files, their concepts as topics, and the analysis run on a file."""

import copy
from pathlib import Path

import pytest
import torch

from unlearn_utils import concept_files
from unlearn_utils import concepts as C
from unlearn_utils.arch import get_adapter

FIXTURE = Path(__file__).parent / "fixtures" / "conceptvectors_small.json"


@pytest.fixture(scope="module")
def topic_model(cache):
    """A small world model that has learnt its 8 topics (about 12 s to train): 2 layers, width 64.

    The same settings as tests/test_concepts.py's ``topic_model``: the world-model cache trains it once per session."""
    from unlearn_utils.models import WorldModelConfig, build_world_model

    config = WorldModelConfig(n_people=20, n_topics=8, hidden_size=64, intermediate_size=256, num_layers=2,
                              num_heads=4, steps=600, batch_size=32, lr=3e-3, warmup=30)
    model, tok = build_world_model(config, progress=False)
    return config.world(), model, tok


def test_conceptvectors_loader_and_analysis_on_a_real_architecture(tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    world, _, tok = tiny
    recs = concept_files.load_conceptvectors(FIXTURE)
    assert [r.concept for r in recs] == ["Sailing", "Baking"]
    assert recs[0].layer == 1 and recs[0].dim == 5 and recs[0].completions[0]["Second_half"] == "holds the sails."
    words = concept_files.concept_words(recs[0], tok)
    assert "keel" in words and "the" not in words
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    other = copy.deepcopy(model)
    for r in recs:
        v = C.value_vector(model, r.layer, r.dim)
        assert len(C.top_tokens(model, tok, v, k=10)) == 10
        change = C.vector_change(model, other, tok, r.layer, r.dim, concept_files.concept_words(r, tok), k=10)
        assert change["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert get_adapter(model).family == "llama"


def test_conceptvectors_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No ConceptVectors file"):
        concept_files.load_conceptvectors(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"Concept": "x", "Layer": 1}]')
    with pytest.raises(ValueError, match="lacks"):
        concept_files.load_conceptvectors(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        concept_files.load_conceptvectors(bad)


def _as_conceptvectors(world, path, vectors):
    """The world's topics written as a ConceptVectors file, with the given (layer, dim) per topic."""
    import json

    rows = [{"Concept": t["name"], "Layer": int(vectors[t["name"]][0]), "Dim": int(vectors[t["name"]][1]),
             "text_completion": [{"First_half": r["prompt"], "Second_half": r["answer"]} for r in world.topic_rows()
                                 if r["topic"] == t["name"] and r["kind"] == "completion"],
             "unrelated_QA": [], "wikipedia_content": " ".join(t["sentences"]),
             "QA": [r["prompt"].replace("Question:", "").replace("Answer:", "").strip() for r in world.topic_rows()
                    if r["topic"] == t["name"] and r["kind"] == "question"]} for t in world.topics]
    path.write_text(json.dumps(rows))
    return path


def test_a_conceptvectors_file_gives_the_worlds_numbers(topic_model, tmp_path):
    """The world's topics written as a ConceptVectors file: scores, located-vector overlap and the causal effect
    computed through the file equal those computed on the world (completions only, the file has no answered QA)."""
    world, model, tok = topic_model
    loc = C.locate_concept_vectors(model, tok, world, k=20)
    path = _as_conceptvectors(world, tmp_path / "cv.json", {r.topic: (r.layer, r.column) for r in loc.itertuples()})
    source = concept_files.concept_source(f"conceptvectors:{path}", tok)
    assert isinstance(source, concept_files.ConceptSet) and ([t["name"] for t in source.topics]
                                                             == [t["name"] for t in world.topics])
    on_world = C.topic_scores(model, tok, world, kinds=("completion",))
    on_file = C.topic_scores(model, tok, source)
    assert on_file.accuracy.tolist() == on_world.accuracy.tolist()
    assert on_file.logprob.to_numpy() == pytest.approx(on_world.logprob.to_numpy(), abs=1e-5)
    given = C.given_vectors(model, tok, source, k=20).set_index("topic")
    assert (given.layer == loc.set_index("topic").layer).all() and (given.column == loc.set_index("topic").column).all()
    # the file's words come from its article, so the overlap is measured against those (a superset of the cluster)
    assert (given.hits >= 0).all() and given.overlap.between(0, 1).all()
    r = loc.iloc[0]
    a = C.causal_effect(model, tok, source, r.topic, r.layer, r.column, scale=10.0)
    clean = C.topic_scores(model, tok, world, kinds=("completion",))
    with C.noised_vector(model, r.layer, r.column, 10.0, seed=0):
        noisy = C.topic_scores(model, tok, world, kinds=("completion",))
    assert a["target_logprob_drop"] == pytest.approx(clean.loc[r.topic, "logprob"] - noisy.loc[r.topic, "logprob"],
                                                     abs=1e-5)
    forget, retain, kept = C.topic_forget_retain(source, r.topic, n_retain_topics=1)
    assert forget and retain and len(kept) == 1 and r.topic not in kept  # no people facts in a concept file
    probes = C.probe_scores(model, tok, source, r.topic)
    assert list(probes.index) == ["plain", "in_context"]
    with pytest.raises(KeyError, match="paraphrase and role-play need the world"):
        C.probe_rows(source, "role_play")


def test_concept_source_errors(tiny, tmp_path):
    world, model, tok = tiny
    assert concept_files.concept_source("world", tok, world) is world
    with pytest.raises(ValueError, match="notebook 03 studies concepts"):
        concept_files.concept_source("qa:questions.jsonl", tok, world)
    with pytest.raises(FileNotFoundError, match="No ConceptVectors file"):
        concept_files.concept_source(f"conceptvectors:{tmp_path / 'missing.json'}", tok)
    path = _as_conceptvectors(world, tmp_path / "cv.json", {t["name"]: (99, 0) for t in world.topics})
    with pytest.raises((IndexError, ValueError), match="layer"):
        C.given_vectors(model, tok, concept_files.concept_source(f"conceptvectors:{path}", tok))
    twice = concept_files.load_conceptvectors(path)
    with pytest.raises(ValueError, match="repeat"):
        concept_files.ConceptSet(twice + twice[:1], tok)


def test_concept_file_limit_keep_and_in_context_without_the_answer(tiny, tmp_path):
    world, model, tok = tiny
    names = [t["name"] for t in world.topics]
    path = _as_conceptvectors(world, tmp_path / "cv.json", {n: (0, i) for i, n in enumerate(names)})
    some = concept_files.concept_source(f"conceptvectors:{path}", tok, limit=2, keep=[names[-1], None])
    assert [t["name"] for t in some.topics] == [names[0], names[1], names[-1]]
    with pytest.raises(KeyError, match="not in"):
        concept_files.concept_source(f"conceptvectors:{path}", tok, keep=["no such concept"])
    plain, in_context = C.probe_rows(some, "plain"), C.probe_rows(some, "in_context")
    assert len(plain) == len(in_context) > 0
    for p, r in zip(plain, in_context):  # context sentences come first and never contain the answer itself
        assert r["prompt"].endswith(p["prompt"])
        assert r["answer"].lower() not in r["prompt"][: -len(p["prompt"])].lower()
    assert any(len(r["prompt"]) > len(p["prompt"]) for p, r in zip(plain, in_context))


def test_concept_file_scored_against_the_original_own_answers(topic_model, tmp_path):
    """With a reference model, completions and QA questions are answered by its own greedy continuation: the
    reference then scores (nearly) 100 %, and a model with that concept's vector noised scores less on it."""
    world, model, tok = topic_model
    loc = C.locate_concept_vectors(model, tok, world, k=20)
    path = _as_conceptvectors(world, tmp_path / "cv.json", {r.topic: (r.layer, r.column) for r in loc.itertuples()})
    source = concept_files.concept_source(f"conceptvectors:{path}", tok, reference=model)
    kinds = {r["kind"] for r in source.topic_rows()}
    assert kinds == {"completion", "question"}
    assert C.topic_scores(model, tok, source).accuracy.min() >= 0.95
    effects = [C.causal_effect(model, tok, source, r.topic, r.layer, r.column, scale=10.0) for r in loc.itertuples()]
    target = sum(e["target_logprob_drop"] for e in effects) / len(effects)
    unrelated = sum(e["unrelated_logprob_drop"] for e in effects) / len(effects)
    assert target > 0 and target > unrelated, (target, unrelated)
    assert concept_files.concept_source("world", tok, world, reference=model) is world  # the world has its own answers
