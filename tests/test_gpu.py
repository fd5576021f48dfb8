"""The kit on a CUDA GPU in bfloat16 (skipped where there is none, as in CI).

The first GPU run (benchmarks/gpu_notebooks.py on an H100) found RMU building its control vector from a CPU tensor
and a GPU one. These tests take every path that places tensors on a device (each unlearning method, full and LoRA,
GRUN, bitsandbytes and round-to-nearest quantization, and the whole audit: patching, RTT, concept vectors,
paraphrase and in-context probes) through CUDA in a few seconds, so a machine with a GPU checks them all with
``pytest tests/test_gpu.py``.
"""

import copy

import pytest
import torch

from unlearn_utils.unlearning import METHODS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPLIT = "forget10"


@pytest.fixture(scope="module")
def on_gpu(knowing):
    world, model, tok = knowing
    return world, copy.deepcopy(model).to("cuda", torch.bfloat16), tok


@pytest.fixture(scope="module")
def facts(on_gpu):
    world = on_gpu[0]
    return world.facts(SPLIT, "trained"), world.facts("retain", "trained", SPLIT)


def _on_cuda(model) -> bool:
    return all(p.device.type == "cuda" for p in model.parameters())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_cuda(on_gpu, facts, method, lora):
    from unlearn_utils.evaluate import answer_scores
    from unlearn_utils.unlearning import unlearn

    world, model, tok = on_gpu
    forget, retain = facts
    before = copy.deepcopy(model.state_dict())
    out, log = unlearn(model, tok, forget, retain, method, lora=lora, steps=3, progress=False)
    assert _on_cuda(out)
    assert torch.isfinite(torch.tensor(log["loss"].tolist(), dtype=torch.float32)).all(), log
    def forget_logprob(m):
        return answer_scores(m, tok, list(forget["prompt"]), list(forget["answer"]))["logprob"].mean()

    assert forget_logprob(out) != forget_logprob(model), "three steps on the GPU changed nothing"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the original was changed"


def test_grun_trains_and_answers_on_cuda(on_gpu, facts):
    from unlearn_utils.evaluate import accuracy
    from unlearn_utils.grun import train_grun

    world, model, tok = on_gpu
    forget, retain = facts
    gated, log = train_grun(model, tok, forget, retain, steps=5, progress=False)
    assert _on_cuda(gated)
    with gated.muted(0):  # the module muted: exactly the base model again
        assert accuracy(gated, tok, forget) == accuracy(model, tok, forget)


@pytest.mark.parametrize("bits,kind", [(8, "nf4"), (4, "nf4"), (4, "fp4")])
def test_bitsandbytes_loads_and_answers_on_cuda(on_gpu, facts, bits, kind):
    from unlearn_utils.evaluate import accuracy
    from unlearn_utils.quantize import load_bnb

    world, model, tok = on_gpu
    q = load_bnb(model, bits, kind, device="cuda", compute_dtype=torch.bfloat16)
    assert q.get_memory_footprint() < 0.8 * sum(p.numel() * p.element_size() for p in model.parameters())
    assert abs(accuracy(q, tok, facts[0]) - accuracy(model, tok, facts[0])) <= 0.5


def test_audit_runs_every_probe_on_cuda(on_gpu, facts):
    from unlearn_utils.audit import audit
    from unlearn_utils.unlearning import unlearn

    world, model, tok = on_gpu
    forget, retain = facts
    unlearned, _ = unlearn(model, tok, forget, retain, "grad_diff", steps=5, progress=False)
    rep = audit(model, unlearned, tok, world, split=SPLIT, progress=False, rtt_epochs=1)
    assert set(rep.verdicts.probe) == {"quantization", "relearning", "patching", "concept_vectors", "paraphrase",
                                       "in_context"}
    assert rep.patching is not None and len(rep.patching)
