"""The few figure kinds the notebooks share. Functions take numbers/tables and return a matplotlib Figure.

Nothing here computes a metric; that lives in the modules that own the idea.
"""

from __future__ import annotations

import os

import matplotlib

if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend().lower():
    matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def bars(values: dict[str, float] | pd.Series, title: str = "", ylabel: str = "", ylim=(0, 1.05), ax=None):
    """One bar per entry, value printed on top."""
    values = pd.Series(values)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(4, 0.7 * len(values) + 2), 3.2))
    ax.bar(range(len(values)), values.to_numpy(), color="tab:blue")
    ax.set_xticks(range(len(values)), values.index, rotation=30, ha="right")
    for i, v in enumerate(values.to_numpy()):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def grouped_bars(table: pd.DataFrame, title: str = "", ylabel: str = "", ylim=(0, 1.05)):
    """Bars grouped by row (x) with one colour per column, e.g. models x metrics."""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(table) + 2), 3.5))
    n = len(table.columns)
    width = 0.8 / n
    x = np.arange(len(table))
    for j, col in enumerate(table.columns):
        ax.bar(x + (j - (n - 1) / 2) * width, table[col].to_numpy(dtype=float), width, label=str(col))
    ax.set_xticks(x, table.index, rotation=20, ha="right")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def heatmap(matrix, row_labels, col_labels, title: str = "", cbar_label: str = "", cmap: str = "RdBu",
            vmin: float | None = None, vmax: float | None = None, annotate: bool = True):
    """A labelled heatmap (RdBu centred on zero when the values have both signs)."""
    m = np.asarray(matrix, dtype=float)
    if vmin is None and vmax is None and np.nanmin(m) < 0 < np.nanmax(m):
        vmax = np.nanmax(np.abs(m))
        vmin = -vmax
    fig, ax = plt.subplots(figsize=(max(4, 0.55 * len(col_labels) + 2), max(2.5, 0.4 * len(row_labels) + 1.2)))
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=40, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    if annotate and m.size <= 300:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=cbar_label)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves(series: dict[str, tuple], title: str = "", xlabel: str = "", ylabel: str = "", ylim=None):
    """Several (x, y) lines on one axis, one per name."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def depth_layers(layers):
    """The depth score's drops by layer (:func:`unlearn_utils.patching.depth_scores`' second table), one line per
    column; an empty table (no retain model) gives an empty figure that says so."""
    fig = curves({c: (list(layers.index), layers[c].tolist()) for c in layers.columns}, xlabel="layer",
                 ylabel="drop (nats)", title="Mean drop of the original's answer when another model's layer is "
                                             "patched in")
    if layers.empty:
        fig.axes[0].text(0.5, 0.5, "no retain model: nothing to patch in", ha="center", va="center",
                         transform=fig.axes[0].transAxes)
        legend = fig.axes[0].get_legend()
        if legend is not None:
            legend.remove()
    return fig


def tradeoff(points: dict[str, tuple[list, list]], title: str = "", xlabel: str = "forget accuracy",
             ylabel: str = "retain accuracy", reference: dict[str, tuple[float, float]] | None = None):
    """Trajectories in the (forget, retain) plane, one per method; arrows show the direction of training."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (xs, ys) in points.items():
        line, = ax.plot(xs, ys, marker="o", markersize=3, label=name)
        if len(xs) > 1:
            ax.annotate("", xy=(xs[-1], ys[-1]), xytext=(xs[-2], ys[-2]),
                        arrowprops=dict(arrowstyle="->", color=line.get_color()))
    for name, (x, y) in (reference or {}).items():
        ax.scatter([x], [y], marker="*", s=150, zorder=5, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def trajectories(logs: dict[str, pd.DataFrame], reference: dict[str, tuple[float, float]] | None = None,
                 title: str = "", x: str = "forget_accuracy", y: str = "retain_accuracy"):
    """:func:`tradeoff` of unlearning logs ({name: log}): each log's evaluated checkpoints (the rows with ``x``) as
    one trajectory in the (``x``, ``y``) plane, with the ``reference`` points (e.g. original and retain model)."""
    points = {}
    for name, log in logs.items():
        rows = log.dropna(subset=[x])
        points[name] = (rows[x].tolist(), rows[y].tolist())
    return tradeoff(points, title=title, reference=reference)


def scatter(points: dict[str, tuple[float, float]], title: str = "", xlabel: str = "", ylabel: str = "",
            diagonal: float | None = None, log: bool = False):
    """Labelled points (one per topic or method); ``diagonal=r`` draws the line y = x / r for reference."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    xs = [x for x, _ in points.values()]
    ys = [y for _, y in points.values()]
    ax.scatter(xs, ys, s=25)
    for name, (x, y) in points.items():
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if log:
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_yscale("symlog", linthresh=1e-3)
    if diagonal and xs:
        hi = max(xs) * 1.05
        ax.plot([0, hi], [0, hi / diagonal], ls="--", color="grey", label=f"target effect = {diagonal:g} x unrelated")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def membership_histogram(member_scores, nonmember_scores, title: str = "", auc: float | None = None,
                         score: str = "Min-40%", labels=("forget people (members)", "holdout people (never seen)"),
                         bins: int = 30):
    """Overlaid histograms of a membership score on member texts and on texts never trained on: the less the two
    overlap, the less an attacker can tell members apart. ``auc`` (the two samples' AUC) is shown after the title."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for scores, label in zip((member_scores, nonmember_scores), labels):
        ax.hist(scores, bins=bins, alpha=0.6, label=label)
    ax.set_xlabel(f"{score} score (higher = looks trained-on)")
    ax.set_ylabel("texts")
    ax.legend()
    ax.set_title(title if auc is None else f"{title}: AUC = {auc:.2f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def audit_figure(report):
    """An audit at a glance: forget-set accuracy under each accuracy probe for the original, the unlearned and
    the retain model (left); the knowledge recovery score of patching, per layer and component (right)."""
    t = report.table
    acc = t[t.measure.isin(["forget accuracy", "V accuracy"])].copy()
    acc["label"] = acc.probe + "\n" + acc.setting
    has_patch = report.patching is not None and len(report.patching)
    fig, axes = plt.subplots(1, 2 if has_patch else 1, figsize=(12 if has_patch else 7, 3.8),
                             gridspec_kw={"width_ratios": [2, 1]} if has_patch else None)
    ax = axes[0] if has_patch else axes
    cols = [c for c in ("original", "unlearned", "retain_model") if c in acc and acc[c].notna().any()]
    width = 0.8 / max(len(cols), 1)
    x = np.arange(len(acc))
    for i, c in enumerate(cols):
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, acc[c].fillna(0).to_numpy(), width, label=c.replace("_", " "))
    ax.set_xticks(x, acc.label, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy on forgotten facts")
    ax.set_title("Does a probe bring forgotten facts back?")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if has_patch:
        ax2 = axes[1]
        for comp, g in report.patching.groupby("component", sort=False):
            ax2.plot(g.layer, g.krs, marker="o", markersize=3, label=comp)
        ax2.set_xlabel("layer (window centre)")
        ax2.set_ylabel("KRS")
        ax2.set_ylim(min(-0.05, float(report.patching.krs.min()) - 0.05), 1.05)
        ax2.set_title("Patching the original's activations")
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig, path: str | os.PathLike) -> None:
    """Save a figure (creating folders), e.g. into reports/figures."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


# ----------------------------------------------------------------------------------------------
# Tables as a person reads them (pandas Stylers: shown by a notebook, never computed on)
# ----------------------------------------------------------------------------------------------
def number(value) -> str:
    """A number for people: 4 significant digits (0.1111, 12.35), powers of ten only for the very small or large
    (1.8e-115), "n/a" for a missing one; text is kept as it is."""
    if isinstance(value, str) or value is None:
        return "n/a" if value is None else value
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if np.isnan(v):
        return "n/a"
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.2e}"


def card_table(card: pd.DataFrame):
    """A report card (:func:`unlearn_utils.evaluate.report_card`) shown whole: numbers formatted one by one (a column
    mixing 0.11 and 1e-115 would print every value as 1.111111e-01) and the "higher means" text never cut off."""
    return (card.style.format(number).hide(axis="index")
            .set_properties(**{"white-space": "normal", "text-align": "left"}))


def share_table(table: pd.DataFrame, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "Reds"):
    """Shares (0-1) as percentages on a white-to-red scale; a missing share reads "n/a" on a plain cell (a gradient
    paints NaN black)."""
    return (table.style.format(lambda v: "n/a" if pd.isna(v) else f"{v:.0%}")
            .background_gradient(vmin=vmin, vmax=vmax, cmap=cmap)
            .highlight_null(props="background-color: #f4f4f4; color: #666"))
