"""Reference models in the spec and at preflight: a malformed entry, a model not at hand and a model
whose code is not trusted are each one line and exit 2, with nothing started."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from contracts.spec import load_spec
from orchestrator.cli import app

runner = CliRunner()

SPEC = """\
name: t
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8]}
pretraining:
  batch_size: 8
  steps: 10
  decoder: {width: 16, depth: 1, mlp: 32, heads: 2}
ladder:
  - {name: a, width: 16, depth: 1, mlp: 32, heads: 2}
evals:
  tasks: [depth]
references:
  - {name: pixels, source: pixels}
  - {name: rand, source: random, width: 16, depth: 1, mlp: 32, heads: 2}
"""


def write(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_references_resolve_with_their_own_identity(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    pixels, rand = spec.reference_configs()
    assert (pixels.source, rand.source) == ("pixels", "random")
    assert rand.key.startswith("rand-") and len(rand.key) == len("rand-") + 6
    other = load_spec(
        write(
            tmp_path,
            SPEC.replace(
                "width: 16, depth: 1, mlp: 32, heads: 2}\n", "width: 32, depth: 1, mlp: 64, heads: 2}\n"
            ),
        )
    )
    assert other.reference_configs()[1].key != rand.key  # another shape is another reference
    assert other.reference_configs()[0].key == pixels.key


BAD = {
    "hf_without_id": ("  - {name: dino, source: hf}\n", "references[2].id", 14),
    "pixels_with_a_layer": ("  - {name: px2, source: pixels, layer: 3}\n", "references[2].layer", 14),
    "unknown_source": ("  - {name: x, source: torchvision, id: resnet}\n", "references[2].source", 14),
    "name_of_a_rung": ("  - {name: a, source: pixels}\n", "references[2].name", 14),
    "fourds_size": ("  - {name: f, source: fourds, path: x.npz, size: L}\n", "references[2].size", 14),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_reference_exits_2_naming_file_field_and_line(tmp_path, monkeypatch, case):
    entry, field, line = BAD[case]
    spec = write(tmp_path, SPEC + entry)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2, result.output
    assert f"{spec}:{line}:" in result.output and field in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_model_not_at_hand_offline_fails_preflight_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = write(tmp_path, SPEC + "  - {name: vjepa, source: hf, id: sweep4d-test/absent-model}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert (
        "sweep4d-test/absent-model" in lines[0]
        and "huggingface-cli download sweep4d-test/absent-model" in lines[0]
    )
    assert not (tmp_path / "runs").exists()


def test_remote_code_is_refused_unless_the_entry_trusts_it(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path / "custom"
    transformers.Dinov2Model(
        transformers.Dinov2Config(
            image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1
        )
    ).save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}  # ships its own modelling code
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, SPEC + "  - {name: custom, source: hf, id: custom}\n")  # a dir, from cwd
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2, result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1, result.output
    assert "trust_remote_code: true" in result.output and "custom" in result.output
    assert not (tmp_path / "runs").exists()


def test_report_compares_the_ladder_with_references_without_fitting_them(tmp_path):
    import pandas as pd

    from reports.console import summary
    from reports.report import make_report
    from reports.results import Report

    sizes = [1e6, 4e6, 16e6, 64e6]
    rows = [  # depth AbsRel (lower is better) falling as a power law: 0.5 * (N / 1e6)^-0.25
        {
            "rung": f"r{i}",
            "params": n,
            "task": "depth",
            "metric": "abs_rel",
            "value": 0.5 * (n / 1e6) ** -0.25,
            "se": 0.01,
        }
        for i, n in enumerate(sizes)
    ]
    rows += [  # r0 0.5, r1 0.354, r2 0.25, r3 0.177
        {
            "rung": "near",
            "params": 2e6,
            "task": "depth",
            "metric": "abs_rel",
            "value": 0.40,
            "se": 0.01,
            "kind": "reference",
        },
        {
            "rung": "far",
            "params": 1e9,
            "task": "depth",
            "metric": "abs_rel",
            "value": 0.10,
            "se": 0.01,
            "kind": "reference",
        },
        {
            "rung": "pixels",
            "params": 0,
            "task": "depth",
            "metric": "abs_rel",
            "value": 0.70,
            "se": 0.01,
            "kind": "reference",
        },
    ]
    res = make_report(pd.DataFrame(rows), tmp_path, fits=["powerlaw"], bootstrap=50, log=lambda _: None)
    (series,) = res.series
    assert set(series.points["rung"]) == {"r0", "r1", "r2", "r3"}  # references are never fitted
    assert [r["rung"] for r in res.rungs] == ["r0", "r1", "r2", "r3"]
    assert {(p.name, p.params, p.value) for p in res.references} == {
        ("near", 2e6, 0.40),
        ("far", 1e9, 0.10),
        ("pixels", 0.0, 0.70),
    }
    found = {line.split(" vs ")[1].split(" (")[0]: line for line in res.reference_findings}
    # near: r1 beats 0.40 by 0.046 > 2 * sqrt(2) * 0.01; r0 does not
    assert "r1 is the first rung to beat it" in found["near"]
    assert "r0 is the first rung" in found["pixels"]
    # far: no rung reaches 0.10; the law reaches it where 0.5 (N / 1e6)^-0.25 = 0.1, at N = 625M
    assert "no rung beats it" in found["far"] and "forecasts the ladder to match it at 62" in found["far"]
    md = (tmp_path / "report.md").read_text()
    assert "## Reference models" in md and "| far | reference | 1B | 0.1 ± 0.01 | 1 |" in md
    assert "| depth/abs_rel (frozen) | r0 | rung | 1M | 0.5 ± 0.01 | 6 |" in md
    assert "<h2>Reference models</h2>" in (tmp_path / "report.html").read_text()
    # fits.json keeps them typed: read back, the same points and findings
    again = Report.load(tmp_path / "fits.json")
    assert again.references == res.references and again.reference_findings == res.reference_findings
    printed = [line for line in summary(res, tmp_path, None, None) if isinstance(line, str)]
    assert [line for line in printed if line.startswith("reference: ")] == [
        f"reference: {f}" for f in res.reference_findings
    ]


def test_a_fits_json_with_references_as_columns_reads_back(tmp_path):
    """Reports written between issue 25 and the typed pipeline kept references as columns."""
    from reports.results import ReferencePoint, Report

    doc = {"sweep": "s", "x": "params", "huber_delta": 1e-3, "bootstrap": 0, "seed": 0}
    doc |= {"checkpoint": "final", "series": [], "reference_findings": ["a vs vmae (...): ..."]}
    doc["references"] = {
        "rung": ["vmae", "pixels"],
        "params": [3e6, 0.0],
        "task": ["depth", "depth"],
        "mode": ["frozen", "frozen"],
        "metric": ["abs_rel", "abs_rel"],
        "dataset": ["synthetic", "synthetic"],
        "value": [0.4, 0.7],
        "se": [0.01, None],
    }
    report = Report.from_json(doc)
    assert report.references == [
        ReferencePoint("vmae", 3e6, "depth", "frozen", "abs_rel", "synthetic", 0.4, 0.01),
        ReferencePoint("pixels", 0.0, "depth", "frozen", "abs_rel", "synthetic", 0.7, None),
    ]
    assert report.reference_findings == ["a vs vmae (...): ..."]
    assert Report.from_json(report.to_json()).references == report.references  # now as records


def test_reference_models_are_drawn_on_every_panel(tmp_path):
    import pandas as pd

    from reports.figures import scaling_figure
    from reports.references import split
    from reports.report import make_report

    rows = [
        {
            "rung": f"r{i}",
            "params": n,
            "task": task,
            "metric": metric,
            "value": v * (n / 1e6) ** -0.2,
            "se": 0.01,
        }
        for i, n in enumerate([1e6, 4e6, 16e6, 64e6])
        for task, metric, v in (("depth", "abs_rel", 0.5), ("tracking", "epe", 4.0))
    ]
    rows += [
        {
            "rung": name,
            "params": n,
            "task": task,
            "metric": metric,
            "value": v,
            "se": 0.02,
            "kind": "reference",
        }
        for name, n in (("vmae", 3e6), ("pixels", 0))
        for task, metric, v in (("depth", "abs_rel", 0.45), ("tracking", "epe", 3.5))
    ]
    report = make_report(pd.DataFrame(rows), tmp_path, fits=["powerlaw"], bootstrap=20, log=lambda _: None)
    ladder, refs = split(pd.read_parquet(tmp_path / "results.parquet"))  # it keeps every row
    assert set(refs["rung"]) == {"vmae", "pixels"}
    fig = scaling_figure(report, ladder)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2
    for ax in panels:
        labels = ax.get_legend_handles_labels()[1]
        assert "vmae (reference)" in labels and "pixels (reference, 0 params)" in labels, labels
        assert "3M" in [t.get_text() for t in ax.get_xticklabels()]  # the reference's size is labelled


def test_policy_wants_reference_evals_from_the_start_frozen_only(tmp_path):
    from orchestrator import policy

    spec = load_spec(
        write(tmp_path, SPEC.replace("tasks: [depth]", "tasks: [depth, action]\n  modes: [frozen, finetune]"))
    )
    keys = [r.key for r in spec.reference_configs()]
    state = policy.SweepState(spec, [policy.RungState(r) for r in spec.rungs()], 1, references=keys)
    actions = policy.decide(state)
    refs = [k for k in actions.submit_evals if k.kind == policy.REFERENCE]
    # nothing is trained yet, yet both references' evals are due: 2 references x 2 tasks, frozen only
    assert sorted((k.owner, k.task, k.mode, k.step) for k in refs) == sorted(
        (key, task, "frozen", 0) for key in keys for task in ("depth", "action")
    )
    state.evals = {k: "done" for k in refs}
    state.rungs = [policy.RungState(r, policy.DONE) for r in spec.rungs()]
    assert policy.decide(state).finished
    state.evals[refs[0]] = "retry"
    assert not policy.decide(state).finished  # a reference eval still to run keeps the sweep going
