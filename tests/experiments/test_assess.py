"""fedpriv assess (issue 15): the recommendation logic on synthetic leakage curves, the report
writer on fake jobs, bad input refused before compute, and (slow) the whole command."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from experiments.assess import data_kind, plan_jobs, split_overrides  # noqa: E402
from experiments.assessment import Axis, Point, Threshold, axis_summary, counts, recommend, weakest_holding  # noqa: E402
from experiments.assessment_report import write_report  # noqa: E402

from .conftest import CONF, REPO, group_options  # noqa: E402

SHARE = Threshold(metric="attack.recognisable_share", below=0.5)
EPSILON = Axis(name="epsilon", key="privacy.target_epsilon", stronger="lower", values=(1.0, 8.0, 64.0))
CLIP = Axis(name="clip", key="defense.l2_clip_norm", stronger="lower", values=(0.1, 1.0))
REFERENCE = {"privacy.target_epsilon": 8.0, "defense.l2_clip_norm": 1.0}
# Test accuracy rises with epsilon: the weakest setting that holds is the cheapest.
ACCURACY = {1.0: 0.4, 8.0: 0.6, 64.0: 0.7}


def _point(attack, role, setting, share, coordinates=None, accuracy=0.8, epsilon=None):
    metrics = {"attack.recognisable_share": share, "utility.test_accuracy": accuracy, "cost.bytes_per_client": 100.0,
               "train.seconds_per_round": 0.5, "privacy.epsilon": epsilon, "privacy.noise_multiplier": 1.0}
    return Point(attack=attack, role=role, setting=setting, coordinates=coordinates or {}, metrics=metrics,
                 source=f"jobs/{attack}--{setting}/metrics.json")


def _curve(attack, shares: dict[float, float]) -> list[Point]:
    """The non-private run (leaks everything) and DP-SGD at each epsilon of ``shares``."""
    return [_point(attack, "nonprivate", "nonprivate", 1.0, accuracy=0.8)] + [
        _point(attack, "grid", f"dp-eps{eps:g}", share, {**REFERENCE, "privacy.target_epsilon": eps},
               accuracy=ACCURACY[eps], epsilon=eps) for eps, share in shares.items()]


def test_monotone_curves_recommend_the_weakest_setting_that_holds_every_attack():
    points = _curve("ig", {1.0: 0.0, 8.0: 0.25, 64.0: 0.75}) + _curve("dlg", {1.0: 0.0, 8.0: 0.0, 64.0: 0.0})
    assert weakest_holding(EPSILON, [(1.0, 0.0), (8.0, 0.25), (64.0, 0.75)], SHARE) == (8.0, [])
    summary = axis_summary(points, EPSILON, REFERENCE, SHARE)
    assert summary["ig"]["weakest"] == 8.0 and summary["dlg"]["weakest"] == 64.0
    best = recommend(points, [EPSILON], SHARE)
    assert best["setting"] == "dp-eps8"  # 64 would cost less accuracy but ig recognises records there
    assert best["accuracy_cost"] == pytest.approx(0.8 - 0.6)
    assert best["privacy.epsilon"] == 8.0 and len(best["sources"]) == 2
    # Equal accuracy and bytes: the smaller epsilon wins, whatever the (noisy) seconds per round say.
    flat = [dataclasses.replace(p, metrics={**p.metrics, "utility.test_accuracy": 0.5,
                                            "train.seconds_per_round": 1.0 / (p.metrics["privacy.epsilon"] or 1.0)})
            for p in _curve("ig", {1.0: 0.0, 8.0: 0.0, 64.0: 0.0})]
    assert recommend(flat, [EPSILON], SHARE)["setting"] == "dp-eps1"


def test_a_hold_beyond_the_first_failure_is_ignored_not_counted():
    # Holds at 1, fails at 8, "holds" again at 64 (an unlucky attack run): only 1 counts.
    points = _curve("ig", {1.0: 0.0, 8.0: 1.0, 64.0: 0.0})
    assert weakest_holding(EPSILON, [(1.0, 0.0), (8.0, 1.0), (64.0, 0.0)], SHARE) == (1.0, [64.0])
    at_64 = next(p for p in points if p.setting == "dp-eps64")
    assert SHARE.holds(at_64.metrics["attack.recognisable_share"]) and not counts(at_64, points, [EPSILON], SHARE)
    assert recommend(points, [EPSILON], SHARE)["setting"] == "dp-eps1"


def test_no_recommendation_when_the_strongest_setting_fails_or_the_score_is_missing():
    points = _curve("ig", {1.0: 0.6, 8.0: 1.0, 64.0: 1.0})
    assert weakest_holding(EPSILON, [(1.0, 0.6), (8.0, 1.0)], SHARE) == (None, [])
    assert recommend(points, [EPSILON], SHARE) is None
    assert not SHARE.holds(float("nan")) and not SHARE.holds(None) and not SHARE.holds("aggregate only")


def test_every_axis_through_a_setting_must_hold_and_direction_is_per_axis():
    points = _curve("ig", {1.0: 0.0, 8.0: 0.0, 64.0: 1.0})
    points.append(_point("ig", "grid", "dp-clip0.1", 0.9, {**REFERENCE, "defense.l2_clip_norm": 0.1}, accuracy=0.5))
    reference = next(p for p in points if p.setting == "dp-eps8")
    assert not counts(reference, points, [EPSILON, CLIP], SHARE)  # the stronger clip 0.1 fails
    assert counts(reference, points, [EPSILON], SHARE)
    batch = Axis(name="batch", key="algorithm.batch_size", stronger="higher", values=(1.0, 4.0, 16.0))
    assert weakest_holding(batch, [(1.0, 0.9), (4.0, 0.1), (16.0, 0.0)], SHARE) == (4.0, [])
    with pytest.raises(ValueError, match=r"assess.grid.axes\[batch\].stronger must be one of"):
        Axis(name="batch", key="algorithm.batch_size", stronger="bigger", values=(1.0,))


def _fake_assessment(folder):
    """Jobs' folders as run.py leaves them: metrics.json, a reconstruction grid, a leak.md."""
    points = _curve("ig", {1.0: 0.0, 8.0: 0.25, 64.0: 0.75})
    points.append(Point(attack="dlg", role="grid", setting="dp-eps8", coordinates=dict(REFERENCE), metrics=None,
                        source="jobs/dlg--dp-eps8/metrics.json", error="ValueError: the model has no dense layer"))
    for point in points:
        job = folder / point.source.rsplit("/", 1)[0]
        job.mkdir(parents=True)
        if point.metrics is not None:
            (job / "metrics.json").write_text(json.dumps(point.metrics))
            figure, axis = plt.subplots(figsize=(1, 1))
            axis.imshow([[0, 1], [1, 0]])
            figure.savefig(job / "reconstruction.png")
            plt.close(figure)
    (folder / "jobs/ig--nonprivate/leak.md").write_text("# What the attack recovered (codes)\n\n| C50.911 | hit |\n")
    context = {"kind": "images", "threshold": SHARE, "axes": [EPSILON], "points": points, "reference": REFERENCE,
               "stack": "none", "assessment": "test", "command": "fedpriv assess", "seconds": 1.0}
    return write_report(folder, context)


def _check_report(folder, attacks):
    markdown, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    for section in ("Recommendation", "Thresholds", "Limits", *(f"Attack: {attack}" for attack in attacks)):
        assert f"# {section}" in markdown and f">{section}</h" in page, section
    assert "not a proof of privacy" in markdown and "not a proof of privacy" in page
    assert not re.search(r"https?://", page)  # self-contained: nothing fetched from the network
    sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert page.count("<img") == len(sources)
    return markdown, page


def test_the_report_writer_writes_every_section_traceable_and_self_contained(tmp_path):
    _fake_assessment(tmp_path)
    markdown, page = _check_report(tmp_path, ("ig", "dlg"))
    assert "| dp-eps8 | 8 | 1 | 0.6 | 0.2 | 100 | 0.5 | jobs/ig--dp-eps8/metrics.json |" in markdown
    assert "| ig | epsilon (privacy.target_epsilon, stronger: lower) | 8 |" in markdown
    assert "Could not run dlg at 1 setting(s): dp-eps8: ValueError: the model has no dense layer" in markdown
    assert "even without any defense" not in markdown  # the non-private run leaks (share 1.0)
    assert "C50.911" in page and (tmp_path / "report_files" / "ig-epsilon.png").stat().st_size > 0
    for link in re.findall(r"!\[[^\]]*\]\(([^)]*)\)", markdown):
        assert (tmp_path / link).is_file()


def _compose_assess(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="assess", overrides=overrides)


def test_a_grid_without_private_settings_or_an_unknown_data_kind_is_refused_naming_the_field():
    cfg = _compose_assess(["assess=quick", "assess.grid.axes.0.values=[]"])
    with pytest.raises(ValueError, match=r"assess.grid.axes has no values"):
        plan_jobs(cfg, {"defense": "none"}, [])
    cfg = _compose_assess(["~assess.data_kinds.phantom"])
    with pytest.raises(ValueError, match=r"data.cohort.kind='phantom' has no attack battery"):
        plan_jobs(cfg, {"defense": "none"}, [])


def test_every_data_preset_has_a_battery_and_a_threshold():
    cfg = _compose_assess([])
    for option in group_options("data"):  # every data preset sets its own cohort.kind
        cfg.data.cohort.kind = OmegaConf.load(CONF / "data" / f"{option}.yaml").cohort.kind
        kind = data_kind(cfg)
        assert len(cfg.assess.batteries[kind]) >= 1 and cfg.assess.thresholds[kind].metric.startswith("attack.")
        for entry in cfg.assess.batteries[kind]:
            assert entry.attack in group_options("attack"), f"{option}: battery names a missing attack {entry.attack}"


def test_the_plan_runs_each_attack_at_every_setting_and_keeps_per_job_overrides_per_job():
    cfg = _compose_assess(["defense=dp_sgd"])
    task = ["defense=dp_sgd", "defense.l2_clip_norm=2.0", "model=mlp", "attack.config.iterations=7",
            "assess.name=x", "privacy.target_epsilon=3"]
    jobs, passthrough = plan_jobs(cfg, {"defense": "dp_sgd"}, task)
    assert passthrough == ["model=mlp"]
    names = [job.name for job in jobs]
    assert len(names) == len(set(names)) == 3 * (1 + 1 + 4)  # 3 attacks x (non-private, stack, 4 grid points)
    stack = next(job for job in jobs if job.role == "stack" and job.attack == "dlg")
    assert stack.values["defense.l2_clip_norm"] == "2.0" and stack.values["privacy.target_epsilon"] == "3"
    grid = [job for job in jobs if job.role == "grid" and job.attack == "dlg"]
    assert sorted(job.coordinates["privacy.target_epsilon"] for job in grid) == [1.0, 8.0, 8.0, 64.0]
    assert all(job.values["attack.config.iterations"] == "7" for job in jobs)
    assert split_overrides(["+x.y=1", "hydra.run.dir=d", "attack=dlg"], [])[0] == ["+x.y=1"]


# The tiny budget of the end-to-end run (experiments/figure.py's smoke budget, for this command).
TINY = ("algorithm.rounds=2", "data.cohort.num_records=48", "data.cohort.image_size=16",
        "data.partition.num_clients=2", "data.partition.min_records=4", "model.width=2", "attack.config.iterations=3")


@pytest.mark.slow
def test_fedpriv_assess_quick_writes_both_report_formats_and_resumes(tmp_path):
    command = [sys.executable, "-m", "experiments.cli", "assess", "--quick", *TINY, f"hydra.run.dir={tmp_path}"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(list((tmp_path / "jobs").glob("*/metrics.json"))) == 3  # non-private + 2 DP settings
    markdown, _ = _check_report(tmp_path, ("inverting_gradients",))
    assert "jobs/inverting_gradients--nonprivate/metrics.json" in markdown
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and (tmp_path / "jobs.log").read_text().count("complete, skipped") == 3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (headless)")
def test_the_html_report_renders_in_headless_chromium_with_every_figure_loaded(tmp_path):
    page = _fake_assessment(tmp_path)
    # The page's script writes how many images decoded into the title; --dump-dom prints the DOM.
    check = "<script>onload=()=>{document.title='loaded '+[...document.images].filter(i=>i.naturalWidth>0).length}</script>"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", check + "</body>"))
    result = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                             "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    images = page.read_text().count("<img")
    assert f"<title>loaded {images}</title>" in result.stdout, result.stderr[-2000:]
