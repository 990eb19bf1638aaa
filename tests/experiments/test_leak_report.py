"""What a code or notes attack leaked, written as a person reads it (leak.md)."""

import pytest

from experiments.outputs import write_leak_report
from fedpriv.scenario_attacks import VictimLeak

from .conftest import run_smoke
from .test_presets import EHR_SMOKE, NOTES_SMOKE


def test_codes_are_listed_with_descriptions_and_hits_marked(tmp_path):
    leak = VictimLeak(client=3, true=("AGE_40_49", "C50.911"), recovered=("C50.911", "C61"))
    write_leak_report(tmp_path / "leak.md", [leak], "codes")
    text = (tmp_path / "leak.md").read_text()
    assert "## Hospital 3" in text
    assert "| C50.911 | Malignant neoplasm of unspecified site of right female breast | yes | **hit** |" in text
    assert "| C61 | Malignant neoplasm of prostate |  | *false* |" in text
    assert "| AGE_40_49 |  | yes | missed |" in text


def test_notes_are_paired_and_shared_words_bold(tmp_path):
    leak = VictimLeak(client=0, true=("mass in left breast", "no lesion"), recovered=("left mass seen", ""))
    write_leak_report(tmp_path / "leak.md", [leak], "tokens")
    text = (tmp_path / "leak.md").read_text()
    assert "1. true: mass in left breast\n   recovered: **left** **mass** seen" in text
    assert "2. true: no lesion\n   recovered: (nothing)" in text


@pytest.mark.slow  # 13-16 s beside the suite; the writer is tested above without a run
def test_the_ehr_scenario_reports_each_victims_codes():
    result = run_smoke(EHR_SMOKE)
    assert result.leaks and result.truth is None
    metrics = result.metrics
    for leak in result.leaks:
        assert leak.true, "a victim used records: it has true codes"
    # Independent oracle: the leaks' own sets give the recall the scorer reported (0/0 = 1).
    recalls = [len(set(leak.true) & set(leak.recovered)) / len(leak.true) for leak in result.leaks]
    assert sum(recalls) / len(recalls) == pytest.approx(metrics["attack.code_recall"])


@pytest.mark.slow
def test_the_notes_scenario_pairs_each_note():
    result = run_smoke(NOTES_SMOKE)
    assert result.leaks
    for leak in result.leaks:
        assert len(leak.true) == len(leak.recovered) >= 1
