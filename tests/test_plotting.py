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


def test_numbers_and_tables_for_people():
    import numpy as np
    import pandas as pd

    from unlearn_utils.plotting import card_table, number, share_table

    assert [number(v) for v in (1 / 9, 12.3456, 0, 1.8e-115, np.nan, "text", 123456.0)] == [
        "0.1111", "12.35", "0", "1.80e-115", "n/a", "text", "1.23e+05"]
    card = pd.DataFrame({"metric": ["a", "b"], "value": [1 / 9, 1.8e-115], "higher_means": ["x " * 60, "y"]})
    page = card_table(card).to_html()
    assert "0.1111" in page and "1.80e-115" in page and "1.111111e-01" not in page and ("x " * 60).strip() in page
    shares = share_table(pd.DataFrame({"m": [0.5, np.nan]})).to_html()
    assert "50%" in shares and "n/a" in shares
    null_cell = shares.split("row1_col0 {")[1].split("}")[0]
    assert null_cell.strip().endswith("color: #666;")  # the n/a cell's own colours come last, not the gradient's black


def test_bitsandbytes_messages_known_to_be_harmless_are_dropped_and_only_those(caplog):
    import logging

    import unlearn_utils  # noqa: F401 - installs the filters

    with caplog.at_level(logging.WARNING):
        logging.getLogger("bitsandbytes.autograd._functions").warning(
            "MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "torch.float32")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no network")
        logging.getLogger("bitsandbytes.autograd._functions").warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
