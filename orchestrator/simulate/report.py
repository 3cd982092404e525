"""What `sweep simulate` prints: a text summary, or one JSON object (--json)."""

from __future__ import annotations

from dataclasses import asdict

from orchestrator.simulate.recommend import Recommendations
from orchestrator.simulate.run import Setup, Summary


def hms(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def triple(values: tuple[float, float, float], fmt=hms) -> str:
    return " / ".join(fmt(v) for v in values)


def text_lines(setup: Setup, s: Summary, recs: Recommendations | None) -> list[str]:
    u = s.unit
    names = {r.key: r.name for r in setup.rungs}
    source = "calibrated from a measured run" if setup.measured else "analytic (contracts.cost)"
    lines = [
        f"{setup.spec.name} on {setup.cluster.name} ({s.units} {u}s), {s.seeds} seed(s), durations {source}",
        f"predicted wall time (P50): {hms(s.makespan_s[1])} ({s.makespan_s[1]:.0f} s)",
        f"makespan P10 / P50 / P90: {triple(s.makespan_s)}",
        f"{u}-hours useful / lost to failures / idle (P50): "
        f"{s.useful_h[1]:.1f} / {s.lost_h[1]:.1f} / {s.idle_h[1]:.1f}",
        f"utilisation P10 / P50 / P90: {triple(s.utilisation, lambda v: f'{v:.1%}')}",
        f"eval lag after the last training step P10 / P50 / P90: {triple(s.eval_lag_s)}",
    ]
    if setup.measured:
        m = setup.measured
        err = s.makespan_s[1] / m.wall_s - 1
        lines.append(
            f"measured wall time of the calibrating run: {hms(m.wall_s)} ({m.wall_s:.0f} s); "
            f"predicted {err:+.1%}"
        )
    if s.failed_runs:
        lines.append(f"in {s.failed_runs} of {s.seeds} seeds a rung failed for good (max_failures)")
    lines.append("rung: finish P50 | interruptions mean (P90) | step s (data-bound?) | checkpoint save s")
    for r in setup.rungs:
        c = setup.durations.rungs[r.key]
        bound = " data-bound" if c.data_bound else ""
        lines.append(
            f"  {r.name}: {hms(s.finish_s[r.key][1])} | {s.interruptions_mean[r.key]:.2f} "
            f"({s.interruptions[r.key][2]:.0f}) | {c.step_s:.3g}{bound} | {c.save_s:.3g}"
        )
    lines.append(f"policy: {s.decisions} decisions, {s.decide_ms:.3f} ms each")
    if recs:
        lines += recommendation_lines(recs, names)
    return lines


def recommendation_lines(recs: Recommendations, names: dict[str, str]) -> list[str]:
    lines = ["recommendations:"]
    for i in recs.intervals:
        if i.young_daly_steps is None:
            lines.append(f"  {i.rung}: checkpoint_interval {i.current_steps} (no failures: fewer is cheaper)")
            continue
        check = f"; simulated best {hms(i.simulated_best_s)}" if i.simulated_best_s else ""
        lines.append(
            f"  {i.rung}: checkpoint_interval {i.current_steps} -> {i.young_daly_steps} steps "
            f"(Young/Daly {hms(i.young_daly_s)}{check}), saves {i.saves_gpu_h:.1f} GPU-hours"
        )
    changed = [g for g in recs.gpus if g.best != g.current]
    if recs.gpus:
        before, after = recs.train_makespan_s
        what = ", ".join(f"{g.rung} {g.current} -> {g.best}" for g in changed) or "keep every rung's"
        lines.append(f"  GPUs per rung: {what}; training makespan {hms(before)} -> {hms(after)}")
    for e in recs.evals:
        lines.append(
            f"  evals with {e.eval_gpus_each} GPU(s) each, {e.dedicated or 'no'} dedicated GPUs: "
            f"makespan {hms(e.makespan_s)}, eval lag {hms(e.eval_lag_s)}"
        )
    return lines


def as_json(setup: Setup, s: Summary, recs: Recommendations | None) -> dict:
    out = {
        "spec": setup.spec.name,
        "cluster": setup.cluster.name,
        "failures_per_gpu_hour": setup.rate,
        "calibrated": bool(setup.measured),
        "summary": asdict(s),
        "rungs": {r.key: asdict(setup.durations.rungs[r.key]) for r in setup.rungs},
    }
    if setup.measured:
        out["measured_wall_s"] = setup.measured.wall_s
    if recs:
        out["recommendations"] = asdict(recs)
    return out


def simulate_command(
    spec_path,
    cluster: str,
    failures: str,
    seeds: int,
    mfu: str | None,
    calibrate: str | None,
    gantt,
    recommendations: bool,
    only: list[str] | None,
    max_concurrent: int | None,
    say,
    decode: str = "auto",
) -> tuple[list[str], dict]:
    """`sweep simulate`'s work: (text lines, the JSON object)."""
    from orchestrator.simulate.gantt import draw_gantt
    from orchestrator.simulate.recommend import recommend
    from orchestrator.simulate.run import prepare, run_seeds, summarize

    setup = prepare(spec_path, cluster, failures, mfu, calibrate, only, max_concurrent, decode)
    say(f"simulating {len(setup.rungs)} rung(s) on {setup.cluster.name} over {seeds} seed(s)")
    results = run_seeds(setup, seeds, record_first=gantt is not None)
    summary = summarize(results, setup.cluster)
    recs = None
    if recommendations and not setup.cluster.cpu_only:
        say("searching checkpoint intervals, GPU counts and eval placements")
        recs = recommend(setup)
    if gantt is not None:
        names = {r.key: r.name for r in setup.rungs}
        title = f"{setup.spec.name} on {setup.cluster.name}, seed 0"
        draw_gantt(results[0], names, title, gantt, summary.unit)
        say(f"wrote {gantt}")
    return text_lines(setup, summary, recs), as_json(setup, summary, recs)
