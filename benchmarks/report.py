"""Tables, curves and qualitative overlays for ``posthoc-bench`` runs.

The table lists, per teacher, the teacher alone and each post-hoc variant with the
pixel metrics (AP, FPR95, AUROC; pooled over the data set, in the metric mode named in
the title) and the component metrics (sIoU_gt, PPV, mean F1 over the 11 IoU thresholds),
each with its change against the teacher alone. A variant is marked "does not help" when
neither AP rises nor FPR95 falls, and "mixed" when only one of them improves.

The PR/ROC plots draw the curves ``posthoc.metrics.PixelMetrics.compute()`` returns (thinned
for plotting); legends show the AP / AUROC of the same computation.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posthoc.adapters.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "format_table",
    "plot_curves",
    "plot_overlay",
    "summarize_results",
    "verdict",
]

#: (key in the metrics dict, column header, lower is better)
COLUMNS: list[tuple[str, str, bool]] = [
    ("ap", "AP", False),
    ("fpr95", "FPR95", True),
    ("auroc", "AUROC", False),
    ("siou_gt", "sIoU", False),
    ("ppv", "PPV", False),
    ("f1_mean", "mean F1", False),
]


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def verdict(base: Mapping[str, Any], variant: Mapping[str, Any]) -> str:
    """'helps', 'mixed' or 'does not help', judged on AP (higher better) and FPR95 (lower better)."""
    ap0, ap1 = _num(base.get("ap")), _num(variant.get("ap"))
    f0, f1 = _num(base.get("fpr95")), _num(variant.get("fpr95"))
    better = []
    if ap0 is not None and ap1 is not None:
        better.append(ap1 > ap0)
    if f0 is not None and f1 is not None:
        better.append(f1 < f0)
    if not better:
        return "n/a"
    if all(better):
        return "helps"
    if any(better):
        return "mixed"
    return "does not help"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _fmt_delta(v: float | None, b: float | None) -> str:
    if v is None or b is None:
        return ""
    d = 100 * (v - b)
    return f" ({d:+.1f})"


def format_table(title: str, rows: Sequence[Mapping[str, Any]], *, notes: Sequence[str] = ()) -> str:
    """Markdown table of benchmark rows.

    Args:
        title: the heading; names the data set, whether it is the synthetic world and the
            metric modes.
        rows: dicts with ``teacher``, ``variant`` (display name), ``metrics`` (dict), and
            ``base`` (the teacher-alone metrics dict, or None for the teacher row).
        notes: lines printed under the table.

    Returns:
        Markdown text (a ``###`` heading, the table, notes). Metrics are shown in percent;
        the change against the teacher alone follows in parentheses.
    """
    head = ["teacher", "variant"] + [c[1] for c in COLUMNS] + ["vs teacher"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * len(COLUMNS) + ["---"]) + "|"]
    for r in rows:
        m, base = r["metrics"], r.get("base")
        cells = [str(r["teacher"]), str(r["variant"])]
        for key, _, _ in COLUMNS:
            v = _num(m.get(key))
            cells.append(_fmt(v) + (_fmt_delta(v, _num(base.get(key))) if base is not None else ""))
        cells.append(verdict(base, m) if base is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


def _savefig(fig, dest: Path) -> Path:
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return dest


def plot_curves(
    dest_pr: os.PathLike,
    dest_roc: os.PathLike,
    curves: Mapping[str, dict],
    metrics: Mapping[str, Mapping[str, Any]],
    title: str,
    *,
    synthetic: bool = False,
) -> list[Path]:
    """Write PR and ROC curve PNGs, one line per variant.

    The PR legend shows each variant's AP, the ROC legend its AUROC and FPR95 (from
    ``metrics``); on the ROC each variant's FPR95 is marked where its curve reaches TPR 0.95,
    on a dotted TPR = 0.95 guide. With ``synthetic`` the title starts with ``SYNTHETIC WORLD``.
    Many variants stay readable: 20 distinct colours with changing line styles, the legend
    outside the axes in as many columns as needed, and a taller figure.

    Args:
        curves: per variant name, a dict of 1-D float arrays ``precision``, ``recall``,
            ``tpr``, ``fpr`` (a pixel pass's curves, any length).
        metrics: per variant name, a metrics dict (``ap``, ``auroc``, ``fpr95``; missing = n/a).
        title: figure title.
        synthetic: the data are the synthetic world, not a real data set.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if synthetic and not title.startswith("SYNTHETIC WORLD"):
        title = f"SYNTHETIC WORLD — {title}"
    n = len(curves)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    styles = ("-", "--", "-.", ":")
    per_col = 18
    ncol = max(1, -(-n // per_col))
    font = 6 if n <= 12 else 5
    out = []
    for kind, dest in (("pr", Path(dest_pr)), ("roc", Path(dest_roc))):
        fig, ax = plt.subplots(figsize=(5.2, 4.4 + 0.08 * max(0, min(n, per_col) - 12)))
        for i, (name, c) in enumerate(curves.items()):
            m = metrics.get(name, {})
            color = cmap(i % cmap.N)
            ls = styles[(i // cmap.N) % len(styles)] if n > cmap.N else styles[0]
            if kind == "pr":
                ap = _num(m.get("ap"))
                ax.plot(c["recall"], c["precision"], label=f"{name} (AP {_fmt(ap)})", lw=1.3, color=color, ls=ls)
            else:
                au, f95 = _num(m.get("auroc")), _num(m.get("fpr95"))
                ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUROC {_fmt(au)}, FPR95 {_fmt(f95)})", lw=1.3,
                        color=color, ls=ls)
                if f95 is not None and np.isfinite(f95):
                    ax.plot([f95], [0.95], marker="o", ms=3.5, color=color, mec="black", mew=0.4, ls="none")
        if kind == "pr":
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
        else:
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
            ax.axhline(0.95, color="0.6", lw=0.6, ls=":")
            ax.text(0.99, 0.945, "TPR 0.95 (dots: FPR95)", fontsize=5, color="0.4", ha="right", va="top")
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(title, fontsize=8)
        if n:
            ax.legend(fontsize=font, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, ncol=ncol)
        ax.grid(alpha=0.3)
        out.append(_savefig(fig, dest))
        plt.close(fig)
    return out


def plot_overlay(
    dest: os.PathLike,
    image: np.ndarray,
    label: np.ndarray | None,
    maps: Mapping[str, np.ndarray],
    proposals: np.ndarray | None,
    title: str,
) -> Path:
    """Qualitative figure (:func:`posthoc.viz.overlay`): the image with the GT anomaly outlined,
    void greyed and the proposal boundaries drawn, then each score map with a colour bar.

    Args:
        image: (H,W,3) uint8 RGB.
        label: (H,W) uint8 0/1/255 or None.
        maps: display name -> (H,W) float scores in [0,1] (e.g. teacher, fused).
        proposals: (H,W) int region labels (-1 unassigned) or None.
    """
    from posthoc.viz import overlay

    fig = overlay(image, {k: np.asarray(m, np.float32) for k, m in maps.items()}, proposals=proposals, gt=label,
                  title=title)
    return _savefig(fig, Path(dest))


#: metrics of the condensed cross-track summary: (key, header, lower is better)
SUMMARY_COLUMNS: list[tuple[str, str, bool]] = [
    ("ap", "AP", False),
    ("fpr95", "FPR95", True),
    ("siou_gt", "sIoU", False),
    ("f1_mean", "mean F1", False),
]


class SummaryError(ValueError):
    """A results.json is missing, corrupt, or not a posthoc-bench result."""


def summarize_results(results: Mapping[str, Any], *, metrics: Sequence[str] | None = None) -> str:
    """One markdown table over every evaluation (track) of a ``posthoc-bench`` run.

    Rows are teacher x variant; for each evaluation (e.g. the anomaly and obstacle tracks)
    the chosen metrics are columns, with the change against the teacher alone in brackets.
    The metric mode and whether the run was on the synthetic world are stated above it.

    Args:
        results: the parsed ``results.json`` of a run.
        metrics: keys of the metrics to show (default AP, FPR95, sIoU, mean F1).
    """
    cols = [c for c in SUMMARY_COLUMNS if metrics is None or c[0] in metrics]
    if metrics is not None:
        known = {c[0] for c in COLUMNS} | {c[0] for c in SUMMARY_COLUMNS}
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise SummaryError(f"unknown metrics {unknown}; known: {', '.join(sorted(known))}")
        cols = [c for c in COLUMNS + SUMMARY_COLUMNS if c[0] in metrics]
        cols = list({c[0]: c for c in cols}.values())
    evs = results.get("evaluations")
    variants = results.get("variants")
    if not isinstance(evs, list) or not evs or not isinstance(variants, Mapping):
        raise SummaryError("not a posthoc-bench results.json: expected 'evaluations' (a non-empty list) and 'variants'")
    teachers: list[str] = []
    for ev in evs:
        for t in ev.get("teachers", {}):
            if t not in teachers:
                teachers.append(t)
    synthetic = any(ev.get("synthetic") for ev in evs)
    lines = [
        f"Metric mode: {results.get('metric_mode', '?')}; values in percent, (±x) = change against the teacher alone"
        + ("; SYNTHETIC WORLD, not the real benchmark" if synthetic else ""),
        "",
    ]
    head = ["teacher", "variant"]
    for ev in evs:
        name = ev.get("key", ev.get("dataset", "?"))
        head += [f"{name} {h}" for _, h, _ in cols]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---|" + "---:|" * (len(head) - 2))
    for t in teachers:
        for vkey, vname in variants.items():
            cells = [t, str(vname)]
            present = False
            for ev in evs:
                tv = ev.get("teachers", {}).get(t, {}).get("variants", {})
                m, base = tv.get(vkey), tv.get("teacher")
                present |= m is not None
                for key, _, _ in cols:
                    v = _num(m.get(key)) if m else None
                    b = _num(base.get(key)) if (base and vkey != "teacher") else None
                    cells.append(_fmt(v) + _fmt_delta(v, b))
            if present:
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
