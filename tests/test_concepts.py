"""Concept vectors: projection, location, causal validation, parametric change, Needle, probes, loaders."""

import copy
from pathlib import Path

import pytest
import torch

from unlearn_utils import concepts as C
from unlearn_utils.arch import get_adapter

FIXTURE = Path(__file__).parent / "fixtures" / "conceptvectors_small.json"


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
    ids = C._word_ids(tok, topic["words"])
    u = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)), dim=0)
    with torch.no_grad():  # give the topic's words a shared direction u in the unembedding, and plant u as a value vector
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
    with pytest.raises(IndexError):
        C.needle(model, tok, (0, 999))
    with pytest.raises(ValueError, match="forget_texts"):
        C.needle(model, tok, (0, 1), steps=3)
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


def test_needle_changes_only_the_chosen_columns(tiny):
    world, model, tok = tiny
    forget, _, _ = C.topic_forget_retain(world, world.topics[0]["name"])
    out, log = C.needle(model, tok, [(0, 2), (1, 5)], scale=1.0, steps=3, forget_texts=[r["text"] for r in forget],
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


def test_conceptvectors_loader_and_analysis_on_a_real_architecture(tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    world, _, tok = tiny
    recs = C.load_conceptvectors(FIXTURE)
    assert [r.concept for r in recs] == ["Sailing", "Baking"]
    assert recs[0].layer == 1 and recs[0].dim == 5 and recs[0].completions[0]["Second_half"] == "holds the sails."
    words = C.concept_words(recs[0], tok)
    assert "keel" in words and "the" not in words
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    other = copy.deepcopy(model)
    for r in recs:
        v = C.value_vector(model, r.layer, r.dim)
        assert len(C.top_tokens(model, tok, v, k=10)) == 10
        change = C.vector_change(model, other, tok, r.layer, r.dim, C.concept_words(r, tok), k=10)
        assert change["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert get_adapter(model).family == "llama"


def test_conceptvectors_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No ConceptVectors file"):
        C.load_conceptvectors(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"Concept": "x", "Layer": 1}]')
    with pytest.raises(ValueError, match="lacks"):
        C.load_conceptvectors(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        C.load_conceptvectors(bad)


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
    source = C.concept_source(f"conceptvectors:{path}", tok)
    assert isinstance(source, C.ConceptSet) and [t["name"] for t in source.topics] == [t["name"] for t in world.topics]
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
    assert a["target_logprob_drop"] == pytest.approx(clean.loc[r.topic, "logprob"] - noisy.loc[r.topic, "logprob"], abs=1e-5)
    forget, retain, kept = C.topic_forget_retain(source, r.topic, n_retain_topics=1)
    assert forget and retain and len(kept) == 1 and r.topic not in kept  # no people facts in a concept file
    probes = C.probe_scores(model, tok, source, r.topic)
    assert list(probes.index) == ["plain", "in_context"]
    with pytest.raises(KeyError, match="paraphrase and role-play need the world"):
        C.probe_rows(source, "role_play")


def test_concept_source_errors(tiny, tmp_path):
    world, model, tok = tiny
    assert C.concept_source("world", tok, world) is world
    with pytest.raises(ValueError, match="notebook 03 studies concepts"):
        C.concept_source("qa:questions.jsonl", tok, world)
    with pytest.raises(FileNotFoundError, match="No ConceptVectors file"):
        C.concept_source(f"conceptvectors:{tmp_path / 'missing.json'}", tok)
    path = _as_conceptvectors(world, tmp_path / "cv.json", {t["name"]: (99, 0) for t in world.topics})
    with pytest.raises((IndexError, ValueError), match="layer"):
        C.given_vectors(model, tok, C.concept_source(f"conceptvectors:{path}", tok))
    twice = C.load_conceptvectors(path)
    with pytest.raises(ValueError, match="repeat"):
        C.ConceptSet(twice + twice[:1], tok)


def test_concept_file_limit_keep_and_in_context_without_the_answer(tiny, tmp_path):
    world, model, tok = tiny
    names = [t["name"] for t in world.topics]
    path = _as_conceptvectors(world, tmp_path / "cv.json", {n: (0, i) for i, n in enumerate(names)})
    some = C.concept_source(f"conceptvectors:{path}", tok, limit=2, keep=[names[-1], None])
    assert [t["name"] for t in some.topics] == [names[0], names[1], names[-1]]
    with pytest.raises(KeyError, match="not in"):
        C.concept_source(f"conceptvectors:{path}", tok, keep=["no such concept"])
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
    source = C.concept_source(f"conceptvectors:{path}", tok, reference=model)
    kinds = {r["kind"] for r in source.topic_rows()}
    assert kinds == {"completion", "question"}
    assert C.topic_scores(model, tok, source).accuracy.min() >= 0.95
    effects = [C.causal_effect(model, tok, source, r.topic, r.layer, r.column, scale=10.0) for r in loc.itertuples()]
    target = sum(e["target_logprob_drop"] for e in effects) / len(effects)
    unrelated = sum(e["unrelated_logprob_drop"] for e in effects) / len(effects)
    assert target > 0 and target > unrelated, (target, unrelated)
    assert C.concept_source("world", tok, world, reference=model) is world  # the world has its own answers
