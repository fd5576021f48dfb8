"""Run by tests/test_distributed.py, plainly and under ``accelerate launch``: unlearn (two methods), GRUN and
relearning on a saved model and question file, each cached; the main process writes what they gave to OUT.

python distributed_script.py MODEL_FOLDER QUESTIONS.jsonl OUT
"""

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from unlearn_utils import distributed  # noqa: E402
from unlearn_utils.benchmark_data import load_qa_splits  # noqa: E402
from unlearn_utils.evaluate import accuracy  # noqa: E402
from unlearn_utils.grun import cached_train_grun  # noqa: E402
from unlearn_utils.models import load_model  # noqa: E402
from unlearn_utils.relearn import relearn  # noqa: E402
from unlearn_utils.unlearning import cached_unlearn  # noqa: E402

folder, questions, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
model, tok = load_model(folder)
data = load_qa_splits(questions)
forget, retain = data["forget"], data["retain"]
results, weights = {"processes": distributed.num_processes()}, {}
for method, settings in (("grad_diff", {"lr": 3e-3}), ("npo_kl", {"lr": 3e-3, "lora": True}),
                         ("rmu", {"lr": 3e-3, "lora": True, "layer": 1})):
    unlearned, log = cached_unlearn(model, tok, None, "file", method, model_key="distributed-test", data=data,
                                    steps=12, batch_size=6, progress=False, **settings)
    results[method] = {"forget": accuracy(unlearned, tok, forget), "retain": accuracy(unlearned, tok, retain),
                       "loss": [float(x) for x in log["loss"]], "cached": bool(log.attrs["cached"])}
    weights.update({f"{method}.{k}": v.detach().clone() for k, v in unlearned.state_dict().items()})
gated, log = cached_train_grun(model, tok, forget, retain, model_key="distributed-test", steps=8, batch_size=6,
                               layers=(1,), progress=False)
results["grun"] = {"forget": accuracy(gated, tok, forget), "retain": accuracy(gated, tok, retain),
                   "loss": [float(x) for x in log["loss"]], "cached": bool(log.attrs.get("cached"))}
weights.update({f"grun.{k}": v.detach().clone() for k, v in gated.grun[0].state_dict().items()})
unlearned, _ = cached_unlearn(model, tok, None, "file", "grad_diff", model_key="distributed-test", data=data, steps=12,
                              batch_size=6, progress=False, lr=3e-3)
for name, start in (("relearn", unlearned), ("relearn_original", model)):
    attacked, rlog = relearn(start, tok, forget, {"forget": forget}, epochs=2, lr=3e-3, batch_size=6,
                             progress=False)
    results[name] = {"forget": [float(x) for x in rlog["forget"]]}
    weights.update({f"{name}.{k}": v.detach().clone() for k, v in attacked.state_dict().items()})
if distributed.is_main():
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "weights.safetensors"))
    (out / "results.json").write_text(json.dumps(results, indent=1))
distributed.barrier()
