"""Hyperparameter transfer: scaling rules resolved per rung, μP's coordinate check, `sweep plan`'s columns."""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from contracts.cost import encoder_params
from contracts.spec import load_spec
from models.mae import VideoMAE, mup_lr_scales, param_groups
from orchestrator.cli import app
from orchestrator.transfer import coordinate_check

SPEC = """\
name: tr
data: {frames: 4, resolution: 16, tubelet: [2, 8, 8]}
pretraining:
  mask_ratio: 0.5
  decoder: {width: 32, depth: 1, mlp: 128, heads: 2}
  optimizer: {lr: 1.0e-2}
  schedule: {warmup_steps: 8}
  batch_size: 8
  steps: 10
ladder:
  - {name: a, width: 32, depth: 2, mlp: 128, heads: 2}
  - {name: b, width: 64, depth: 2, mlp: 256, heads: 4}
  - {name: c, width: 128, depth: 2, mlp: 512, heads: 8}
"""


def spec_with(tmp_path, scaling: str, extra: str = ""):
    path = tmp_path / "s.yaml"
    path.write_text(
        SPEC.replace("  steps: 10\n", f"  steps: 10\n  scaling:\n{textwrap.indent(scaling, '    ')}") + extra
    )
    return path


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        ("lr: {rule: constant}\n", lambda w, ratio: 1e-2),
        ("lr: {rule: inverse_width}\n", lambda w, ratio: 1e-2 * 32 / w),
        ("lr: {rule: power, exponent: -0.5}\n", lambda w, ratio: 1e-2 * ratio**-0.5),
        ("lr: {rule: mup}\n", lambda w, ratio: 1e-2),
    ],
)
def test_lr_rules_resolve_per_rung_and_plan_prints_them(tmp_path, scaling, expected):
    spec = load_spec(spec_with(tmp_path, scaling))
    n_base = encoder_params(spec.rungs()[0].model)  # rung a is the base (the ladder's first)
    for r in spec.rungs():
        ratio = encoder_params(r.model) / n_base
        assert r.optimizer.lr == pytest.approx(expected(r.model.encoder.width, ratio), rel=1e-12)
        assert (r.model.mup is not None) == ("mup" in scaling)
    rows = json.loads(CliRunner().invoke(app, ["plan", str(tmp_path / "s.yaml"), "--json"]).output)
    assert [p["lr"] for p in rows] == [r.optimizer.lr for r in spec.rungs()]
    assert {p["parametrization"] for p in rows} == {"mup" if "mup" in scaling else "sp"}


def test_warmup_and_batch_rules_and_the_rungs_own_values_win(tmp_path):
    a, _, c = load_spec(
        spec_with(tmp_path, "warmup: {rule: power, exponent: 0.5}\nbatch: {rule: power, exponent: 0.5}\n")
    ).rungs()
    ratio = encoder_params(c.model) / encoder_params(a.model)
    assert a.schedule.warmup_steps == 8 and c.schedule.warmup_steps == round(8 * ratio**0.5)
    assert c.batch_size % c.workers == 0 and abs(c.batch_size - 8 * ratio**0.5) <= c.workers
    path = spec_with(tmp_path, "lr: {rule: inverse_width}\n")
    path.write_text(path.read_text().replace("heads: 8}", "heads: 8, lr: 0.5}"))
    assert load_spec(path).rungs()[2].optimizer.lr == 0.5  # the rung's own lr, not 1e-2 * 32 / 128


def test_scaled_values_are_part_of_the_identity_and_constant_rules_change_no_hash(tmp_path):
    plain = load_spec(spec_with(tmp_path, "lr: {rule: constant}\n")).rungs()
    (tmp_path / "p.yaml").write_text(SPEC)
    assert [r.key for r in load_spec(tmp_path / "p.yaml").rungs()] == [r.key for r in plain]
    scaled = load_spec(spec_with(tmp_path, "lr: {rule: inverse_width}\n")).rungs()
    assert scaled[0].key == plain[0].key and scaled[1].key != plain[1].key  # the base rung is unchanged


@pytest.mark.parametrize(
    ("scaling", "where"),
    [
        ("lr: {rule: power}\n", "pretraining.scaling.lr.exponent"),
        ("lr: {rule: inverse_width, exponent: 1}\n", "pretraining.scaling.lr.exponent"),
        ("lr: {rule: cubic}\n", "pretraining.scaling.lr.rule"),
        ("warmup: {rule: mup}\n", "pretraining.scaling.warmup.rule"),
        ("base: zz\n", "pretraining.scaling.base"),
    ],
)
def test_bad_rules_exit_2_naming_field_and_line(tmp_path, scaling, where):
    path = spec_with(tmp_path, scaling)
    result = CliRunner().invoke(app, ["plan", str(path)])
    line = next(
        i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(scaling[:4])
    )
    assert result.exit_code == 2 and where in result.output and f"s.yaml:{line}" in result.output, (
        result.output
    )


def test_mup_scales_hidden_matrices_only_and_the_base_shape_is_standard(tmp_path):
    base, wide = (r.model for r in load_spec(spec_with(tmp_path, "lr: {rule: mup}\n")).rungs()[::2])
    scales = mup_lr_scales(VideoMAE(wide))
    assert (
        scales["encoder.blocks.0.attn.qkv.weight"] == 32 / 128
        and scales["encoder.blocks.1.mlp.2.weight"] == 128 / 512
    )
    assert "encoder.patch_embed.weight" not in scales and "decoder.head.weight" not in scales
    assert all(v == 1.0 for v in mup_lr_scales(VideoMAE(base)).values())
    groups = param_groups(VideoMAE(wide), 1e-2, 0.05)
    assert sorted({g["lr"] for g in groups}) == pytest.approx([1e-2 * 32 / 128, 1e-2])
    # At its base shape a μP model computes what the standard one does (same init, same forward).
    torch.manual_seed(0)
    mup = VideoMAE(base)
    torch.manual_seed(0)
    sp = VideoMAE(replace(base, mup=None))
    x = torch.randn(2, 3, 4, 16, 16)
    idx = torch.arange(8).expand(2, -1)
    assert torch.equal(mup.encoder(x, idx[:, :4]), sp.encoder(x, idx[:, :4]))


def test_coordinate_check_is_flat_under_mup_and_grows_under_standard(tmp_path):
    """Widths 1x-8x the base (32 -> 256), 12 AdamW steps at the base's LR, sizes averaged over 4 seeds:
    μP keeps every layer's output size (log-log slope against width within ±0.1), the standard
    parametrisation grows the hidden ones. Measured: μP within ±0.07, standard +0.9..+2.0. (One seed
    moves sizes by ~10%, as much as a slope of 0.1 over a doubling; past ~20 steps the decoder head's
    output grows with width under μP because wider models fit faster, which is not a blow-up.)"""
    spec = load_spec(spec_with(tmp_path, "lr: {rule: mup}\n"))
    rows = coordinate_check(spec, [32, 64, 128, 256], steps=12, seeds=4, log=lambda line: None)
    slopes = {(r.parametrization, r.kind): r.slope for r in rows}
    assert all(math.isfinite(s) for s in slopes.values())
    assert max(abs(s) for (par, _), s in slopes.items() if par == "mup") <= 0.1, slopes
    assert min(slopes[("sp", k)] for k in ("attn", "mlp", "encoder_out", "decoder_embed")) >= 0.5, slopes


def test_check_transfer_rejects_bad_widths(tmp_path):
    result = CliRunner().invoke(
        app, ["check-transfer", str(spec_with(tmp_path, "lr: {rule: mup}\n")), "--widths", "8,16"]
    )
    assert result.exit_code == 2 and "3 or more" in result.output


# ---------------------------------------------------------------- the LR search in the report


def grid_table(optimum, grid=(1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2), sizes=(("a", 1e5), ("b", 1e6), ("d", 1e7))):
    """Held-out loss 1 + (log lr - log optimum(N))^2 at the final checkpoint of each grid point,
    plus an unsearched rung c at 1e8 with a depth metric (the table `sweep report` collects)."""
    import pandas as pd

    rows = []
    for base, n in sizes:
        for lr in grid:
            loss = 1 + (math.log(lr) - math.log(optimum(n))) ** 2
            for step, v in ((5, loss + 1), (10, loss)):
                rows.append(
                    {
                        "rung": f"{base}-lr{lr:g}",
                        "params": n,
                        "step": step,
                        "task": "pretraining",
                        "metric": "val_loss",
                        "value": v,
                        "search_of": base,
                        "lr": lr,
                    }
                )
    rows.append(
        {
            "rung": "c",
            "params": 1e8,
            "step": 10,
            "task": "depth",
            "metric": "abs_rel",
            "value": 0.2,
            "search_of": None,
            "lr": 1e-3,
        }
    )
    return pd.DataFrame(rows)


def test_lr_search_finds_each_optimum_fits_the_law_and_suggests_an_lr():
    from reports.lr_search import analyse, best_points_only

    law = lambda n: 4e-3 * (n / 1e6) ** -0.25  # noqa: E731  (inside the grid for every size)
    result = analyse(grid_table(law))
    assert (
        result["status"] == "analysed"
        and result["metric"] == "pretraining/val_loss"
        and not result["warnings"]
    )
    for s in result["sizes"]:
        assert s["optimal_lr"] == pytest.approx(law(s["params"]), rel=0.02)
    fitted = result["law"]
    assert fitted["b"] == pytest.approx(-0.25, abs=0.02) and fitted["b_lo"] < -0.25 < fitted["b_hi"]
    (c,) = result["suggested"]
    assert c["rung"] == "c" and c["lr"] == pytest.approx(law(1e8), rel=0.1) and c["lo"] < law(1e8) < c["hi"]
    table = best_points_only(grid_table(law), result)
    assert sorted(table["rung"].unique()) == ["a", "b", "c", "d"]  # one point per size, named as its rung


def test_an_optimum_on_the_edge_of_its_grid_is_a_warning():
    from reports.lr_search import analyse

    result = analyse(grid_table(lambda n: 5e-2 if n == 1e7 else 4e-3))
    (warning,) = result["warnings"]
    assert "d" in warning and "largest of its grid" in warning and "widen the grid up" in warning
    assert [s["edge"] for s in result["sizes"]] == [None, None, "high"]


def test_report_from_a_table_prints_the_lr_search(tmp_path):
    grid_table(lambda n: 4e-3 * (n / 1e6) ** -0.25).to_csv(tmp_path / "t.csv", index=False)
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--from",
            str(tmp_path / "t.csv"),
            "--out",
            str(tmp_path / "out"),
            "--bootstrap",
            "20",
            "--fit",
            "powerlaw",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "optimal LR ~ N^-0.25" in result.output and "suggested LR for c" in result.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Learning-rate search" in md and "suggested LR for c" in md
