"""The report pipeline reads and reproduces what the code before it wrote (issue 23).

tests/data/report_v1/ was written by the report code of commit d0c319b (before the pipeline and
its typed results), from the same tables: fits_before.json with --predict 22B on the ladder
without its 22B rung (its predictions.json and the store copy under predictions/), fits_after.json
once the 22B rung landed (the stored forecast scored), and predict_70B.json, that code's
`predict_from_fits(fits_before.json, "70B")`. See tests/data/README.md.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from typer.testing import CliRunner

from reports.report import fit_report, make_report, predict_from_fits
from reports.results import SCHEMA, Report

DATA = Path(__file__).parent / "data" / "report_v1"
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from compare_reports import differences  # noqa: E402

OLD = dict(fits=["auto"], bootstrap=50, log=lambda line: None)  # the settings that wrote the fixtures


def old(name: str):
    return json.loads((DATA / name).read_text())


def test_a_fits_json_written_before_the_schema_reads_back_unchanged():
    before = old("fits_before.json")
    assert "schema" not in before
    report = Report.from_json(before)
    assert report.schema == 1 and report.series[0].fits[0].fit is not None
    n, diffs = differences(before, json.loads(report.dumps()))
    assert diffs == [] and n > 1000


def test_predictions_from_an_old_fits_json_are_the_old_numbers():
    n, diffs = differences(old("predict_70B.json"), predict_from_fits(DATA / "fits_before.json", "70B"))
    assert diffs == [] and n > 50


def test_the_pipeline_reproduces_every_number_of_the_old_report_and_registers_the_same_forecasts(tmp_path):
    make_report(DATA / "ladder_before.csv", tmp_path / "rep", predict="22B", **OLD)
    new = json.loads((tmp_path / "rep" / "fits.json").read_text())
    assert new["schema"] == SCHEMA
    before = old("fits_before.json")
    _, diffs = differences(before, new)
    # A registration is named by the hash of its document, which holds the date it was made; and
    # since issue 24 a forecast's value and interval are the forms averaged (reports.uncertainty),
    # with how far it reaches, whether the forms agree and the benchmark's coverage beside it; since
    # session 15 also how far its law passes from the largest fitted rung (a sixth added field).
    dated = [d for d in diffs if _field(d) in ("sha256", "created")]
    averaged = [d for d in diffs if _field(d) in ("value", "lo", "hi") and "forecast" in d]
    added = [d for d in diffs if d.endswith("only in new") and "/forecast/" in d]
    assert sorted(diffs) == sorted(dated + averaged + added)
    assert len(dated) == 1 + 2 * 3 and len(added) == 6 * 3  # registration/sha256; each row's two
    for s_old, s_new in zip(before["series"], new["series"], strict=True):
        f_old, f_new = s_old["forecast"], s_new["forecast"]
        assert f_new["form"] == f_old["form"] and f_new["backtest_error"] == f_old["backtest_error"]
        assert abs(f_new["value"] / f_old["value"] - 1) < 0.02  # the same forecast, within 2%
        assert f_new["lo"] <= f_old["lo"] and f_new["hi"] >= f_old["hi"]  # form doubt widens it
        assert f_new["extrapolation_ratio"] > 1 and isinstance(f_new["forms_agree"], bool)
    registered = json.loads((tmp_path / "rep" / "predictions.json").read_text())
    n, diffs = differences(old("predictions.json")["predictions"], registered["predictions"])
    averaged = [d for d in diffs if _field(d) in ("value", "lo", "hi") or d.endswith("only in new")]
    assert diffs == averaged and n > 30


def _field(diff: str) -> str:
    """The last key of a `differences` line's path ("series/0/forecast/hi: ..." -> "hi")."""
    return diff.split(":")[0].rsplit("/", 1)[-1]


def test_sweep_report_from_a_file_scores_an_old_store_as_the_old_code_did(tmp_path, monkeypatch):
    """`sweep report --from` beside a store of forecasts registered by the old code: every number of
    the report, the scored forecasts included, is the old report's."""
    from orchestrator.cli import app

    monkeypatch.chdir(tmp_path)
    shutil.copytree(DATA / "predictions", tmp_path / "predictions")
    result = CliRunner().invoke(
        app, ["report", "--from", str(DATA / "ladder.csv"), "--out", "rep", "--bootstrap", "50"]
    )
    assert result.exit_code == 0, result.output
    assert "Coverage: 3/3" in result.output and "forecasts vs outcomes" in result.output
    after = old("fits_after.json")
    assert after["forecasts"]["scored"] == 3  # the fixture holds a scored forecast per series
    n, diffs = differences(after, json.loads((tmp_path / "rep" / "fits.json").read_text()))
    assert diffs == [] and n > 1000


def test_the_local_ladder_report_has_the_same_numbers_as_before(tmp_path):
    """The local ladder's results (4 rungs, 33 series), reported by the old code and by the pipeline:
    every field of fits.json is the same (figures are not drawn: the numbers are the point)."""
    report, _, _ = fit_report(
        DATA / "local_ladder_results.csv", tmp_path, fits=["powerlaw"], bootstrap=20, log=lambda line: None
    )
    before = old("local_ladder_fits.json")
    assert len(before["series"]) == 33
    n, diffs = differences(before, json.loads(report.dumps()))
    assert diffs == [] and n > 4000
