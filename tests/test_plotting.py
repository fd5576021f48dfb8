import numpy as np
import pandas as pd

from unlearn_utils import plotting


def test_trajectories_draw_each_logs_evaluated_checkpoints():
    logs = {"ga": pd.DataFrame({"step": [0, 1, 5, 10], "forget_accuracy": [1.0, None, 0.3, 0.0],
                                "retain_accuracy": [0.9, None, 0.8, 0.2]}),
            "npo": pd.DataFrame({"step": [0, 5], "forget_accuracy": [1.0, 0.5], "retain_accuracy": [0.9, 0.85]})}
    fig = plotting.trajectories(logs, reference={"retain model": (0.1, 0.9)}, title="t")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["ga", "npo"]
    assert ax.lines[0].get_xdata().tolist() == [1.0, 0.3, 0.0] and ax.lines[0].get_ydata().tolist() == [0.9, 0.8, 0.2]
    assert ax.lines[1].get_xdata().tolist() == [1.0, 0.5]
    assert ax.collections[0].get_offsets().tolist() == [[0.1, 0.9]] and ax.get_title() == "t"


def test_membership_histogram():
    fig = plotting.membership_histogram(np.array([-1.0, -0.5, -0.2]), np.array([-3.0, -2.0]), title="Original model",
                                        auc=0.8333, bins=10)
    ax = fig.axes[0]
    assert ax.get_title() == "Original model: AUC = 0.83"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["forget people (members)",
                                                                   "holdout people (never seen)"]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 20 and sum(heights[:10]) == 3 and sum(heights[10:]) == 2
    assert ax.get_xlabel() == "Min-40% score (higher = looks trained-on)" and ax.get_ylabel() == "texts"
    assert plotting.membership_histogram([0.1], [0.2], title="x").axes[0].get_title() == "x"
