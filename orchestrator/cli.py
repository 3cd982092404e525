"""`sweep`: the command line. Each command parses, validates, then hands off to
the module that owns the work; user-fixable errors become one message and exit 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts.errors import UserError
from contracts.spec import SpecError, human_count, load_spec
from contracts.tasks import MODES, TASK_NAMES

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Scaling-law sweeps for 4D video representations."
)
world_app = typer.Typer(no_args_is_help=True, help="Look at the synthetic 4D world.")
app.add_typer(world_app, name="world")
# Piped output (logs, CI) gets a wide console instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def user_errors_exit_2(fn):
    """One clear message and exit code 2 for input a user can fix; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:  # every layer's "fix your input" error (contracts.errors)
            err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


SpecArg = Annotated[Path, typer.Argument(help="sweep spec YAML, e.g. sweeps/local_ladder.yaml")]


@app.command()
@user_errors_exit_2
def validate(spec: SpecArg):
    """Check a sweep spec and print its resolved rungs."""
    s = load_spec(spec)
    out.print(
        f"{spec}: valid sweep '{s.name}' with {len(s.ladder)} rungs: " + ", ".join(r.key for r in s.rungs())
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@app.command()
@user_errors_exit_2
def plan(
    spec: SpecArg,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    mfu: Annotated[float, typer.Option(help="assumed model FLOPs utilisation for GPU-hours")] = 0.4,
    peak_tflops: Annotated[
        float, typer.Option(help="per-GPU peak TFLOP/s (H100 SXM bf16 dense: 989)")
    ] = 989.0,
    gpu_memory_gib: Annotated[float, typer.Option(help="memory of one GPU, for the fit check")] = 80.0,
):
    """What the ladder costs before spending it: params, FLOPs, memory per GPU, GPU-hours."""
    from dataclasses import asdict

    from orchestrator.plan import plan_sweep

    if not 0 < mfu <= 1:
        raise SpecError(f"--mfu must be in (0, 1], got {mfu}")
    s = load_spec(spec)
    plans = plan_sweep(s, mfu=mfu, peak_flops=peak_tflops * 1e12, gpu_memory_gib=gpu_memory_gib)
    if as_json:
        print(json.dumps([asdict(p) for p in plans], indent=2))
    else:
        t = Table(title=f"sweep '{s.name}': {len(plans)} rungs")
        for col in (
            "rung",
            "shape w/d/mlp/h",
            "enc params",
            "dec params",
            "FLOPs/clip",
            "train FLOPs",
            "steps x batch",
            "GPUs",
            "mem/GPU",
            "GPU-h",
        ):
            t.add_column(col, justify="right")
        for p in plans:
            t.add_row(
                p.key,
                p.shape,
                human_count(p.encoder_params),
                human_count(p.decoder_params),
                f"{p.flops_per_clip:.2e}",
                f"{p.train_flops:.2e}",
                f"{p.steps} x {p.batch_size}",
                str(p.gpus) if p.gpus else f"cpu x{p.workers}",
                _gib(p.mem_per_gpu_bytes) + ("" if p.fits else " !"),
                f"{p.gpu_hours:,.0f}" if p.gpus else "-",
            )
        t.add_section()
        gpu_hours = sum(p.gpu_hours for p in plans)
        t.add_row(
            "total",
            "",
            "",
            "",
            "",
            f"{sum(p.train_flops for p in plans):.2e}",
            "",
            "",
            "",
            f"{gpu_hours:,.0f}" if gpu_hours else "-",
        )
        out.print(t)
        out.print(f"GPU-hours at {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s per GPU.")
    for p in plans:
        if not p.fits:
            err.print(
                f"[yellow]warning:[/] rung {p.name} needs ~{_gib(p.mem_per_gpu_bytes)} per GPU on {p.gpus} GPUs, more than "
                f"{gpu_memory_gib:g} GiB: give it more GPUs, a smaller micro_batch_size, or activation_checkpointing"
            )


RunsOpt = Annotated[Path, typer.Option("--runs-dir", help="where run state lives")]


@app.command()
@user_errors_exit_2
def run(
    spec: SpecArg,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: the spec's, else a local cluster)")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="at most this many rungs training at once")
    ] = None,
    only: Annotated[str | None, typer.Option(help="comma-separated rung names to run")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would run, start nothing")] = False,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray cluster (default: all)")] = None,
    runs_dir: RunsOpt = Path("runs"),
):
    """Train every rung, evaluate every checkpoint, log it all to MLflow. Re-running resumes."""
    _run(
        spec,
        address=address,
        max_concurrent=max_concurrent,
        only=only,
        dry_run=dry_run,
        num_cpus=num_cpus,
        runs_dir=runs_dir,
        train_only=False,
    )


@app.command()
@user_errors_exit_2
def train(
    spec: SpecArg,
    rung: Annotated[str, typer.Option(help="the rung to train")],
    address: Annotated[str | None, typer.Option(help="Ray cluster address")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray cluster")] = None,
    runs_dir: RunsOpt = Path("runs"),
):
    """Pretrain one rung outside a sweep (no evals), with the same outputs as `sweep run`."""
    _run(
        spec,
        address=address,
        max_concurrent=1,
        only=rung,
        dry_run=False,
        num_cpus=num_cpus,
        runs_dir=runs_dir,
        train_only=True,
    )


def _run(spec: Path, *, address, max_concurrent, only, dry_run, num_cpus, runs_dir, train_only) -> None:
    from orchestrator.progress import SweepDisplay, duration
    from orchestrator.scheduler import open_sweep

    sweep = open_sweep(
        spec,
        runs_dir,
        only=only.split(",") if only else None,
        train_only=train_only,
        max_concurrent=max_concurrent,
    )
    sweep.preflight()
    if dry_run:
        t = Table(title=f"dry run of sweep '{sweep.spec.name}' (nothing started)")
        for col in ("rung", "action", "steps", "checkpoints", "evals done"):
            t.add_column(col)
        for r in sweep.describe():
            t.add_row(r["rung"], r["action"], str(r["steps"]), str(r["checkpoints"]), str(r["evals_done"]))
        out.print(t)
        return
    with SweepDisplay(f"sweep '{sweep.spec.name}'", out) as display:
        sweep.say = display.say
        code = sweep.run(address, num_cpus=num_cpus, display=display)
    if code == 130:
        raise typer.Exit(130)
    s = sweep.summary()
    t = Table(
        title=f"sweep '{sweep.spec.name}': {'done' if code == 0 else 'finished with failures'} in {duration(s['wall_s'])}"
    )
    for col in ("rung", "state", "waited", "trained in", "evals", "failure"):
        t.add_column(col)
    for r in s["rungs"]:
        evals = f"{r['evals_done']}/{r['evals_total']}" + (
            f" ({r['evals_failed']} failed)" if r["evals_failed"] else ""
        )
        t.add_row(
            r["rung"],
            r["state"],
            duration(r["wait_s"]),
            duration(r["train_s"]),
            evals,
            "; ".join(filter(None, [r["reason"], *r["failures"]]))[:100],
        )
    out.print(t)
    out.print(f"GPU-hours used: {s['gpu_hours']:.2f}. Next: sweep report --fit powerlaw")
    if code:
        raise typer.Exit(code)


@app.command()
@user_errors_exit_2
def status(spec: SpecArg, runs_dir: RunsOpt = Path("runs")):
    """Where a sweep stands: rung x (state, step / total, last checkpoint, evals, failures, ETA)."""
    from orchestrator.status import status_rows

    s = load_spec(spec)
    rows = status_rows(s, runs_dir)
    t = Table(title=f"sweep '{s.name}'")
    for col in ("rung", "state", "step", "last checkpoint", "evals", "failures", "ETA"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["rung"],
            r["state"],
            f"{r['step']}/{r['total']}",
            str(r["last_checkpoint"] or "-"),
            f"{r['evals_done']}/{r['evals_total']}",
            r["failures"] or "",
            r["eta"],
        )
    out.print(t)


@app.command()
@user_errors_exit_2
def report(
    spec: Annotated[
        Path | None, typer.Argument(help="the sweep's spec (default: the most recent sweep under runs/)")
    ] = None,
    fit: Annotated[
        list[str] | None, typer.Option(help="powerlaw | saturating | chinchilla (repeat or comma-separate)")
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from", help="fit results from a CSV/Parquet table instead")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="where to write the report files")] = None,
    predict: Annotated[
        str | None, typer.Option(help="print predictions at a size (22B, 300M) or a rung name")
    ] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for intervals")] = 1000,
    huber_delta: Annotated[float, typer.Option(help="Huber loss delta (log space)")] = 1e-3,
    checkpoint: Annotated[
        str, typer.Option(help="final | best: which checkpoint of a rung the size laws use")
    ] = "final",
    seed: int = 0,
    runs_dir: RunsOpt = Path("runs"),
):
    """Fit scaling laws (with bootstrap intervals), draw the scaling figure, write the report."""
    from contracts.layout import most_recent_sweep, read_json
    from orchestrator.tracking import absolute_tracking_uri
    from reports.collect import ReportError, collect_mlflow
    from reports.fit import FORMS
    from reports.report import log_report_to_mlflow, make_report, predict_from_fits

    s = load_spec(spec) if spec is not None else None
    forms = [f for item in (fit or (s.report.fits if s else ["powerlaw"])) for f in item.split(",") if f]
    bad = [f for f in forms if f not in FORMS]
    if bad:
        raise ReportError(f"unknown fit form(s) {', '.join(bad)}; choose from {', '.join(FORMS)}")
    sweep = uri = None
    if from_file is not None:
        table, report_dir = from_file, out_dir or runs_dir / f"from-{from_file.stem}" / "report"
    else:
        if s is not None:
            sweep, uri = s.name, absolute_tracking_uri(s.tracking.uri)
        else:
            recent = most_recent_sweep(runs_dir)
            info = read_json(recent / "sweep.json") if recent else None
            if not info:
                raise ReportError(
                    f"no sweep found under {runs_dir}/: run `sweep run SPEC` first, or pass a spec or --from FILE"
                )
            sweep, uri = recent.name, info["tracking_uri"]
        report_dir = out_dir or runs_dir / sweep / "report"
        err.print(f"collecting sweep '{sweep}' from {uri}", highlight=False)
        table = collect_mlflow(uri, sweep)
    result = make_report(
        table,
        report_dir,
        fits=forms,
        x=s.report.x if s else "params",
        huber_delta=huber_delta,
        bootstrap=bootstrap,
        seed=seed,
        checkpoint=checkpoint,
        log=lambda line: err.print(line, highlight=False),
    )
    if sweep:
        log_report_to_mlflow(uri, sweep, report_dir)
    fitted = sum(e.get("status") == "fitted" for ser in result.get("series", []) for e in ser.get("fits", []))
    out.print(
        f"report: {report_dir / 'report.html'} ({fitted} fitted laws; figures scaling.png, compute.png; fits.json)"
    )
    if predict:
        size: str | int = predict
        if s is not None and predict in {r.name for r in s.rungs()}:
            size = s.rung(predict).encoder_params
        rows = predict_from_fits(report_dir / "fits.json", size)
        t = Table(title=f"predictions at {predict}")
        for col in ("metric", "form", "predicted", "95% interval"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["series"], r["form"], f"{r['value']:.4g}", f"[{r['lo']:.4g}, {r['hi']:.4g}]")
        out.print(t)


@app.command("eval")
@user_errors_exit_2
def eval_(
    checkpoint: Annotated[
        Path, typer.Argument(help="a checkpoint dir (runs/<sweep>/<rung>/checkpoints/step_N) or its export/")
    ],
    task: Annotated[
        list[str], typer.Option(help="task(s): point_tracking camera_pose depth box_tracking action")
    ],
    mode: Annotated[str, typer.Option(help="frozen | finetune")] = "frozen",
    spec: Annotated[Path | None, typer.Option(help="take readout and data settings from this spec")] = None,
):
    """Evaluate one checkpoint's features on tasks and print the metrics (what `sweep run` fans out)."""
    from contracts.spec import Data, Evals
    from models.export import ExportError, export_dir

    bad = [t for t in task if t not in TASK_NAMES]
    if bad or mode not in MODES:
        raise SpecError(
            f"unknown task {bad} or mode {mode!r}; tasks: {', '.join(TASK_NAMES)}; modes: {', '.join(MODES)}"
        )
    rung_json = export_dir(checkpoint) / "rung.json"
    if not rung_json.is_file():
        raise ExportError(
            f"{checkpoint}: no encoder export here (expected export/encoder.safetensors and rung.json)"
        )
    if spec is not None:
        s = load_spec(spec)
        evals, data = s.evals, s.data
    else:
        evals, data = Evals(), Data(**json.loads(rung_json.read_text())["data"])
    from evals.run import evaluate

    results = {}
    for name in task:  # clips and frozen features are cached, so tasks still share them
        with out.status(f"evaluating {checkpoint} on {name} ({mode})"):
            results[name] = evaluate(
                str(checkpoint), name, mode=mode, readout=evals.readout_for(name), data=data
            )
    t = Table(title=f"{checkpoint} ({mode})")
    for col in ("task", "metric", "value", "trivial baseline"):
        t.add_column(col)
    for name, metrics in results.items():
        for k, v in metrics.items():
            if not k.startswith("baseline_"):
                base = metrics.get(f"baseline_{k}")
                t.add_row(name, k, f"{v:.4f}", "-" if base is None else f"{base:.4f}")
    out.print(t)


@world_app.command("preview")
@user_errors_exit_2
def world_preview(
    out_path: Annotated[Path, typer.Option("--out", help="PNG to write")] = Path("runs/world_preview.png"),
    clips: Annotated[int, typer.Option(min=1, max=16)] = 3,
    frames: Annotated[int, typer.Option(min=2)] = 8,
    size: Annotated[int, typer.Option(min=16)] = 64,
    seed: int = 0,
    split: str = "train",
):
    """Write a contact sheet of synthetic clips: RGB, depth, and tracks + boxes drawn."""
    from data4d.preview import write_contact_sheet
    from data4d.world import SyntheticWorld

    out_path.parent.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(frames=frames, size=size, seed=seed, split=split)
    write_contact_sheet(world, list(range(clips)), out_path)
    out.print(
        f"wrote {out_path} ({clips} clips of {frames}x{size}x{size}; classes: {', '.join(world.CLASSES)})"
    )


@app.command()
@user_errors_exit_2
def bench(
    tiny: Annotated[
        bool, typer.Option("--tiny", help="a CPU-sized clip (8x32x32) and encoder: seconds on a laptop")
    ] = False,
    rungs: Annotated[
        str | None, typer.Option(help="comma-separated rungs (default S,B,L; 'tiny' with --tiny)")
    ] = None,
    batch: Annotated[
        int | None, typer.Option(min=1, help="micro-batch (default 64 on GPU, 2 on CPU, 8 with --tiny)")
    ] = None,
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile both models (minutes of warm-up)")
    ] = False,
    no_peer: Annotated[
        bool, typer.Option("--no-peer", help="skip transformers' VideoMAEForPreTraining")
    ] = False,
    steps: Annotated[
        int | None, typer.Option(min=1, help="timed steps per repeat (default 20 on GPU, 5 on CPU)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
):
    """Time the pretraining step, ours against transformers' VideoMAE: clips/s, TFLOP/s, MFU, memory."""
    from orchestrator.bench import print_table, run_bench

    names = [r.strip() for r in rungs.split(",") if r.strip()] if rungs else None
    rows = run_bench(
        rungs=names,
        tiny=tiny,
        batch=batch,
        steps=steps,
        compile=compile,
        peer=not no_peer,
        log=lambda line: err.print(line, markup=False, highlight=False),
    )
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, out)


@app.command()
@user_errors_exit_2
def ui(
    spec: Annotated[
        Path | None, typer.Argument(help="spec whose store to open (default: the most recent sweep)")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5000,
    host: Annotated[
        str, typer.Option(help="interface to bind; 127.0.0.1 keeps it on this machine")
    ] = "127.0.0.1",
    runs_dir: RunsOpt = Path("runs"),
):
    """The MLflow dashboard on the sweep's tracking store."""
    from orchestrator.ui import serve

    def say(line: str) -> None:  # whole lines (a URL must stay clickable), shown at once even in a log file
        out.print(line, highlight=False, soft_wrap=True)
        out.file.flush()

    code = serve(spec, host, port, runs_dir, say=say)
    raise typer.Exit(code)
