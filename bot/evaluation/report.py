"""Presenting an evaluation: the metric table, an HTML page with the equity curves, and the model card."""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.evaluation.metrics import FloatArray
from bot.model.card import CARD_FILE, ModelCard

COLUMNS = [
    ("sharpe", "Sharpe", "{:+.2f}"),
    ("sortino", "Sortino", "{:+.2f}"),
    ("annual_return", "ann.ret", "{:+.2%}"),
    ("annual_volatility", "ann.vol", "{:.2%}"),
    ("max_drawdown", "maxDD", "{:.2%}"),
    ("calmar", "Calmar", "{:+.2f}"),
    ("turnover", "turnover", "{:.1f}"),
    ("costs", "costs", "{:.2%}"),
    ("directional_accuracy", "dir.acc", "{:.1%}"),
    ("information_coefficient", "IC", "{:+.3f}"),
]


def render_table(report: Mapping[str, Any]) -> str:
    """The metric table, model first, then the baselines, then the confidence intervals."""
    rows = {"model": report["model"], **report["baselines"]}
    name_width = max(len(n) for n in rows)
    header = "".ljust(name_width) + "".join(f"{title:>10}" for _, title, _ in COLUMNS)
    span = report["span"]
    lines = [
        f"{report['strategy']}: walk-forward over {span['start'][:10]} .. {span['end'][:10]}"
        f" ({span['bars']} bars, {report['folds']} folds), same engine, risk and costs for every row",
        header,
    ]
    for name, metrics in rows.items():
        cells = "".join(
            f"{fmt.format(metrics[key]):>10}" if key in metrics else f"{'-':>10}" for key, _, fmt in COLUMNS
        )
        lines.append(name.ljust(name_width) + cells)
    lo, hi = report["sharpe_ci"]
    boot = report["bootstrap"]
    lines.append(
        f"model Sharpe 95% CI [{lo:+.2f}, {hi:+.2f}] (moving-block bootstrap, block {boot['block']} bars, "
        f"{boot['samples']} samples)"
    )
    for name, (lo, hi) in report["sharpe_diff_ci"].items():
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "not distinguishable"
        lines.append(f"model - {name} Sharpe 95% CI [{lo:+.2f}, {hi:+.2f}]: {verdict}")
    lines.append(f"books: {report['database']}")
    return "\n".join(lines)


def write_html(
    path: Path, report: Mapping[str, Any], curves: Mapping[str, tuple[list[datetime], FloatArray]]
) -> Path:
    """A self-contained page: the table and every book's equity curve (normalised to 1) as inline SVG."""
    width, height, pad = 960, 420, 40
    times = next(iter(curves.values()))[0]
    t0, t1 = times[0].timestamp(), times[-1].timestamp()
    normalised = {name: equity / equity[0] for name, (_, equity) in curves.items()}
    low = min(float(c.min()) for c in normalised.values())
    high = max(float(c.max()) for c in normalised.values())
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#7f7f7f", "#9467bd", "#8c564b"]

    def point(t: datetime, v: float) -> str:
        x = pad + (t.timestamp() - t0) / (t1 - t0) * (width - 2 * pad)
        y = height - pad - (v - low) / ((high - low) or 1) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    step = max(1, len(times) // 2000)  # a few thousand points per line are plenty for the eye
    lines, legend = [], []
    for i, (name, curve) in enumerate(normalised.items()):
        colour = colours[i % len(colours)]
        points = " ".join(point(times[j], float(curve[j])) for j in range(0, len(times), step))
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{points}"/>')
        legend.append(f'<span style="color:{colour}">&#9632; {html.escape(name)} {curve[-1]:.3f}</span>')
    title = html.escape(report["strategy"])
    page = f"""<!doctype html><meta charset="utf-8"><title>paperbot evaluation: {title}</title>
<body style="font-family: sans-serif">
<h2>Walk-forward evaluation of {title}</h2>
<p>Equity, normalised to 1 at the start; y from {low:.3f} to {high:.3f}.</p>
<svg width="{width}" height="{height}" style="border:1px solid #ccc">{"".join(lines)}</svg>
<p>{" &nbsp; ".join(legend)}</p>
<pre>{html.escape(render_table(report))}</pre>
<details><summary>report JSON</summary><pre>{html.escape(json.dumps(report, indent=2))}</pre></details>
</body>
"""
    path.write_text(page, encoding="utf-8")
    return path


def attach_to_card(folder: Path, report: Mapping[str, Any]) -> None:
    """Write the evaluation into the version's card (atomically: a reader never sees half a card)."""
    card = dataclasses.replace(ModelCard.read(folder), evaluation=dict(report))
    tmp = folder / f".{CARD_FILE}.tmp"
    tmp.write_text(card.to_json(), encoding="utf-8")
    tmp.replace(folder / CARD_FILE)
