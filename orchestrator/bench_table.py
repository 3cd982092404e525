"""How `sweep bench` shows its rows: a rich table, with the peaks its MFU is quoted against."""

from __future__ import annotations

from contracts.spec import human_count

HEADERS = (
    "rung",
    "impl",
    "batch",
    "prec",
    "compile",
    "params",
    "GFLOP/clip",
    "step ms",
    "clips/s",
    "tokens/s",
    "TFLOP/s",
    "MFU",
    "MFU sheet",
    "peak mem",
    "max µbatch",
    "ours/peer",
)


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def print_table(rows: list[dict], console) -> None:
    """The benchmark as a rich table on `console`, with the peaks MFU is quoted against."""
    from rich.table import Table

    if not rows:
        console.print("no rows")
        return
    first = rows[0]
    cpu = first["device"] == "cpu"
    t = Table(title=f"training step, {first['device']}")
    for h in HEADERS:
        t.add_column(h, justify="left" if h in ("rung", "impl") else "right")
    for r in rows:
        mfu_none = "n/a" if cpu else "-"
        t.add_row(
            r["rung"],
            r["impl"],
            str(r["batch"]),
            r["precision"],
            "yes" if r["compile"] else "no",
            human_count(r["params"]),
            f"{r['flops_per_clip'] / 1e9:.3g}",
            f"{r['step_ms']:.1f}",
            f"{r['clips_per_s']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['tflops']:.3g}",
            _fmt(r["mfu"], ".1%", mfu_none),
            _fmt(r["mfu_datasheet"], ".1%", mfu_none),
            _fmt(r["peak_mem_gib"], ".1f", "n/a") + ("" if r["peak_mem_gib"] is None else " GiB"),
            "n/a on CPU" if cpu else _fmt(r["max_micro_batch"], "d"),
            _fmt(r["vs_peer"], ".2f") + ("" if r["vs_peer"] is None else "x"),
        )
    console.print(t)
    if cpu:
        console.print("MFU: n/a on CPU (no bf16 tensor-core peak to compare with)")
    else:
        console.print(
            f"MFU = achieved / measured bf16 matmul peak ({_fmt(first['peak_tflops_measured'], '.0f')} "
            f"TFLOP/s); MFU sheet = achieved / datasheet dense bf16 peak "
            f"({_fmt(first['peak_tflops_datasheet'], '.0f')} TFLOP/s)"
        )
    console.print(
        "FLOPs: analytic training FLOPs per clip (models/cost.py), the same for both impls; "
        "tokens/s counts every token of the clip"
    )
