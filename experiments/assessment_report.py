"""The assessment's report: one content, two renderings (Markdown and a self-contained HTML page).

The HTML page needs nothing but itself: figures are base64 PNG data URIs, the CSS is inline and
no URL appears, so a security team can mail it or open it offline. Every number in a table
names the ``metrics.json`` it came from (relative to the assessment folder).
"""

from __future__ import annotations

import base64
import html
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.assessment import axis_summary, counts, recommend  # noqa: E402
from experiments.outputs import OBJECTIVES  # noqa: E402

FILES = "report_files"
CSS = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .5em;font-size:.9em}"
       "th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}")
LIMITS = ("A pass is not a proof of privacy. The accountant's epsilon (privacy.epsilon, with its unit and delta in "
          "metrics.json) is the guarantee; these attacks are evidence of what a curious server recovers with "
          "this budget of iterations, rounds and victims, and a stronger attack may recover more.")


def write_report(output_dir: Path, context: dict) -> Path:
    """Writes ``report.md``, ``report.html`` and ``report_files/``; returns the HTML path."""
    (output_dir / FILES).mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(output_dir, context)
    (output_dir / "report.md").write_text(to_markdown(blocks))
    (output_dir / "report.html").write_text(to_html(blocks, output_dir))
    return output_dir / "report.html"


def report_blocks(output_dir: Path, context: dict) -> list[tuple]:
    points, threshold = context["points"], context["threshold"]
    attacks = list(dict.fromkeys(point.attack for point in points))
    blocks = [("heading", 1, f"Leakage assessment ({context['assessment']})"),
              ("paragraph", f"Command: {context['command']}. Data kind: {context['kind']}. Attacks: "
                            f"{', '.join(attacks)}. Configured defense stack: {context['stack']}. "
                            f"Wall time: {context['seconds']:.0f} s."),
              ("paragraph", f"An attack is below the recognisable threshold when {threshold.metric} < "
                            f"{threshold.below:g}. A DP setting counts only if the attack is below the threshold "
                            "there and at every stronger setting of the same grid axis; holds beyond the first "
                            "failure are listed as ignored. A job that failed or reported no score counts as "
                            "not holding.")]
    blocks += recommendation_blocks(points, context)
    blocks += threshold_blocks(points, context)
    for attack in attacks:
        blocks += attack_blocks(output_dir, attack, [p for p in points if p.attack == attack], context)
    return blocks + limit_blocks(points, context)


def recommendation_blocks(points, context) -> list[tuple]:
    best = recommend(points, context["axes"], context["threshold"])
    blocks = [("heading", 2, "Recommendation")]
    if best is None:
        return blocks + [("paragraph", "No setting of the grid or the configured stack held every attack below "
                                       "the threshold: extend assess.grid towards stronger settings.")]
    header = ["setting", "epsilon", "noise multiplier", "test accuracy", "accuracy cost vs non-private",
              "bytes per client", "seconds per round", "source"]
    row = [best["setting"], _cell(best["privacy.epsilon"]), _cell(best["privacy.noise_multiplier"]),
           _cell(best["utility.test_accuracy"]), _cell(best["accuracy_cost"]), _cell(best["cost.bytes_per_client"]),
           _cell(best["train.seconds_per_round"]), " ".join(best["sources"])]
    return blocks + [("paragraph", "The cheapest setting at which every attack holds: highest test accuracy, then "
                                   "fewest bytes per client; on a tie the smaller epsilon, then fewest seconds per "
                                   "round:"), ("table", header, [row])]


def threshold_blocks(points, context) -> list[tuple]:
    header = ["attack", "axis", "weakest holding value", "epsilon there", "noise multiplier there",
              "accuracy cost there", "tested", "ignored (non-monotone)", "source"]
    nonprivate = {p.attack: p for p in points if p.role == "nonprivate"}
    rows = []
    for axis in context["axes"]:
        for attack, found in axis_summary(points, axis, context["reference"], context["threshold"]).items():
            at = found["point"]
            metrics = at.metrics if at is not None else {}
            baseline = (nonprivate.get(attack).metrics or {}) if attack in nonprivate else {}
            cost = _difference(baseline.get("utility.test_accuracy"), metrics.get("utility.test_accuracy"))
            rows.append([attack, f"{axis.name} ({axis.key}, stronger: {axis.stronger})",
                         "none holds" if found["weakest"] is None else f"{found['weakest']:g}",
                         _cell(metrics.get("privacy.epsilon")), _cell(metrics.get("privacy.noise_multiplier")),
                         _cell(cost), ", ".join(f"{v:g}" for v in found["tested"]),
                         ", ".join(f"{v:g}" for v in found["ignored"]), at.source if at is not None else ""])
    return [("heading", 2, "Thresholds"), ("table", header, rows)]


def attack_blocks(output_dir: Path, attack: str, points, context) -> list[tuple]:
    threshold, axes = context["threshold"], context["axes"]
    # The kind's headline beside the threshold metric (images: PSNR beside the recognisable share).
    headline = OBJECTIVES.get(context["kind"], threshold.metric)
    header = ["setting", "role", threshold.metric, "holds (monotone rule)", headline, "epsilon", "noise multiplier",
              "test accuracy", "source or error"]
    # Without a score the attack's own status says why (e.g. only the aggregate was observed).
    rows = [[p.setting, p.role, _cell((p.metrics or {}).get(threshold.metric, (p.metrics or {}).get("attack.status"))),
             "yes" if counts(p, points, axes, threshold) else "no", _cell((p.metrics or {}).get(headline)),
             _cell((p.metrics or {}).get("privacy.epsilon")),
             _cell((p.metrics or {}).get("privacy.noise_multiplier")),
             _cell((p.metrics or {}).get("utility.test_accuracy")), p.source if p.metrics else p.error]
            for p in points]
    blocks = [("heading", 2, f"Attack: {attack}"), ("table", header, rows)]
    figure = epsilon_figure(output_dir, attack, points, context)
    if figure is not None:
        blocks.append(("image", figure, f"{attack}: {threshold.metric} over epsilon"))
    return blocks + evidence_blocks(output_dir, points)


def epsilon_figure(output_dir: Path, attack: str, points, context) -> str | None:
    """The metric over the accountant's ε along the first axis, the threshold and the
    non-private and stack runs as horizontal lines."""
    threshold, axis = context["threshold"], context["axes"][0]
    anchor = {key: value for key, value in context["reference"].items() if key != axis.key}
    line = sorted((float(p.metrics["privacy.epsilon"]), float(p.metrics.get(threshold.metric, math.nan)))
                  for p in points if p.role == "grid" and p.metrics is not None and "privacy.epsilon" in p.metrics
                  and {k: v for k, v in p.coordinates.items() if k != axis.key} == anchor)
    if not line:
        return None
    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot(*zip(*line), "o-", label="DP-SGD")
    axes.axhline(threshold.below, color="red", linestyle=":", label=f"threshold {threshold.below:g}")
    for point, style in ((p, "--" if p.role == "nonprivate" else "-.") for p in points if p.role != "grid"):
        if point.metrics is not None and threshold.metric in point.metrics:
            axes.axhline(float(point.metrics[threshold.metric]), color="grey", linestyle=style, label=point.setting)
    axes.set_xscale("log")
    axes.set_xlabel("epsilon (accountant)")
    axes.set_ylabel(threshold.metric)
    axes.set_title(attack, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    relative = f"{FILES}/{attack}-epsilon.png"
    figure.savefig(output_dir / relative, dpi=100)
    plt.close(figure)
    return relative


def evidence_blocks(output_dir: Path, points) -> list[tuple]:
    """Each job's reconstruction grid (copied beside the report) or leaked records (leak.md)."""
    blocks = []
    for point in points:
        job = output_dir / Path(point.source).parent
        if (job / "reconstruction.png").exists():
            relative = f"{FILES}/{job.name}.png"
            shutil.copyfile(job / "reconstruction.png", output_dir / relative)
            blocks += [("heading", 3, f"Reconstructions at {point.setting}"),
                       ("image", relative, f"reconstructions, {point.setting}")]
        if (job / "leak.md").exists():
            blocks += [("heading", 3, f"Leaked records at {point.setting}"), ("leak", (job / "leak.md").read_text())]
    return blocks


def limit_blocks(points, context) -> list[tuple]:
    ran = sorted({p.attack for p in points if p.metrics is not None})
    refused = {}
    for point in points:
        if point.metrics is None:
            refused.setdefault(point.attack, []).append(f"{point.setting}: {point.error}")
    lines = [f"Attacks that ran: {', '.join(ran) or 'none'}."]
    lines += [f"Could not run {attack} at {len(why)} setting(s): {'; '.join(why)}." for attack, why in refused.items()]
    lines += [f"{p.attack} stays below the threshold even without any defense ({p.source}): at this budget it is "
              "too weak to be evidence for any setting; raise assess.budget before trusting its passes."
              for p in points if p.role == "nonprivate" and counts(p, points, context["axes"], context["threshold"])]
    lines += [LIMITS, "Not covered: membership inference, a malicious server that changes the model, rounds other "
              "than attack.observe_round, and attacks at a budget larger than assess.budget."]
    return [("heading", 2, "Limits")] + [("paragraph", line) for line in lines]


def to_markdown(blocks) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "heading":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "paragraph":
            out.append(block[1])
        elif kind == "table":
            out.append("\n".join(["| " + " | ".join(block[1]) + " |", "|" + "---|" * len(block[1])]
                                 + ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in block[2]]))
        elif kind == "image":
            out.append(f"![{block[2]}]({block[1]})")
        else:  # a job's leak.md, its headings moved below the report's
            out.append("\n".join("###" + line if line.startswith("#") else line for line in block[1].splitlines()))
    return "\n\n".join(out) + "\n"


def to_html(blocks, output_dir: Path) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind == "heading":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "paragraph":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "image":
            data = base64.b64encode((output_dir / block[1]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">')
        else:
            body.append(f"<pre>{html.escape(block[1])}</pre>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>fedpriv leakage assessment</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _cell(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    return f"{number:.4g}" if math.isfinite(number) else str(value)


def _difference(first, second):
    try:
        return float(first) - float(second)
    except (TypeError, ValueError):
        return None
