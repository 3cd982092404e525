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

# Only contracts, typer and rich at the top: each command imports its own modules in its body, so
# `sweep --help`, validate, plan and status answer without loading torch, Ray or MLflow.
from contracts.errors import UserError
from contracts.spec import SpecError, load_spec
from contracts.storage import check_reachable, runs_root
from contracts.tasks import EVAL_FORMATS

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
            # soft_wrap: the message stays one line however long (scripts and tests read it whole)
            err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
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

    from orchestrator.plan import memory_warnings, plan_sweep, plan_table, scaling_note

    if not 0 < mfu <= 1:
        raise SpecError(f"--mfu must be in (0, 1], got {mfu}")
    s = load_spec(spec)
    plans = plan_sweep(s, mfu=mfu, peak_flops=peak_tflops * 1e12, gpu_memory_gib=gpu_memory_gib)
    if as_json:
        print(json.dumps([asdict(p) for p in plans], indent=2))
    else:
        out.print(plan_table(s, plans))
        out.print(f"GPU-hours at {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s per GPU.")
        if note := scaling_note(s):
            out.print(note)
    for line in memory_warnings(plans, gpu_memory_gib):
        err.print(f"[yellow]warning:[/] {line}")


@app.command("check-transfer")
@user_errors_exit_2
def check_transfer(
    spec: SpecArg,
    widths: Annotated[
        str | None, typer.Option(help="comma-separated widths (default: the base rung's x1, x2, x4, x8)")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="AdamW steps before measuring")] = 12,
    seeds: Annotated[int, typer.Option(min=1, help="runs per width whose sizes are averaged")] = 4,
    lr: Annotated[
        float | None, typer.Option(help="the LR for both parametrisations (default: the spec's)")
    ] = None,
):
    """μP's coordinate check: activation size against width after a few steps, standard vs μP.

    Trains the spec's base rung (pretraining.scaling.base, else the first) at several widths and
    prints each layer kind's output RMS with its log-log slope against width. Near 0 under μP
    means an LR tuned at one width transfers; well above 0 under the standard parametrisation at
    the same LR is why a constant LR over-drives wide rungs."""
    from orchestrator.transfer import check_transfer as run_check

    say = lambda line: err.print(line, highlight=False)  # noqa: E731
    check = run_check(load_spec(spec), widths, steps=steps, seeds=seeds, lr=lr, log=say)
    out.print(check.table())
    out.print(check.verdict())


RunsOpt = Annotated[
    str | None,
    typer.Option(
        "--runs-dir",
        help="where run state lives: a directory or a store URI (s3://bucket/prefix); "
        "default: the spec's storage:, else runs",
    ),
]


@app.command()
@user_errors_exit_2
def run(
    spec: SpecArg,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: the spec's, else a local cluster)")
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="at most this many rungs training at once (default: as many as the cluster can place "
            "at once; every rung when it autoscales)",
        ),
    ] = None,
    only: Annotated[str | None, typer.Option(help="comma-separated rung names to run")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would run, start nothing")] = False,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray cluster (default: all)")] = None,
    runs_dir: RunsOpt = None,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit", help="run the driver on the cluster as a Ray Job (--address: its dashboard)"
        ),
    ] = False,
):
    """Train every rung, evaluate every checkpoint, log it all to MLflow. Re-running resumes."""
    if submit:
        from orchestrator.jobs import submit_and_tell

        return submit_and_tell(spec, address, runs_dir, only, max_concurrent, say=print)
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
    runs_dir: RunsOpt = None,
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
    from orchestrator.progress import SweepDisplay, dry_run_table, summary_table
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
        out.print(dry_run_table(sweep.spec.name, sweep.describe()))
        return
    with SweepDisplay(f"sweep '{sweep.spec.name}'", out) as display:
        sweep.say = display.say
        code = sweep.run(address, num_cpus=num_cpus, display=display)
    if code in (130, 143):  # Ctrl-C, SIGTERM: MLflow flushed and reconciled; rerun to resume
        raise typer.Exit(code)
    summary = sweep.summary()
    out.print(summary_table(sweep.spec.name, code, summary))
    out.print(f"GPU-hours used: {summary['gpu_hours']:.2f}. Next: sweep report")
    if code:
        raise typer.Exit(code)


@app.command()
@user_errors_exit_2
def status(
    spec: SpecArg,
    runs_dir: RunsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as a JSON list")] = False,
):
    """Where a sweep stands: rung x (state, step / total, last checkpoint, evals, restarts, failures, ETA)."""
    from orchestrator.status import status_rows, status_table

    s = load_spec(spec)
    rows = status_rows(s, runs_dir)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    out.print(status_table(s.name, rows))


@app.command()
@user_errors_exit_2
def sync(spec: SpecArg, runs_dir: RunsOpt = None):
    """Make MLflow hold every metric on disk: log what each rung's run lacks, never a duplicate.

    `sweep run` does this itself when it starts and stops, and `sweep report` before collecting;
    this is the same repair on its own (after a crash, or to check a store)."""
    from orchestrator.reconcile import sync_spec

    sync_spec(load_spec(spec), runs_dir, say=lambda line: out.print(line, markup=False, highlight=False))


# `sweep report`'s options, named here so the command reads as what it does.
FitOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="auto | powerlaw | saturating | chinchilla (repeat or comma-separate). Default: the spec's "
        "report.fits if it sets them, else auto: every size law backtested per series, the best selected"
    ),
]
FromOpt = Annotated[Path | None, typer.Option("--from", help="fit results from a CSV/Parquet table instead")]
PredictOpt = Annotated[
    str | None,
    typer.Option(
        help="register forecasts at a size (22B, 300M) or a rung name: predictions.json, hashed, "
        "scored when it lands"
    ),
]
CheckpointOpt = Annotated[
    str, typer.Option(help="final | best: which checkpoint of a rung the size laws use")
]


@app.command()
@user_errors_exit_2
def report(
    spec: Annotated[
        Path | None, typer.Argument(help="the sweep's spec (default: the most recent sweep under runs/)")
    ] = None,
    fit: FitOpt = None,
    from_file: FromOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="where to write the report files")] = None,
    predict: PredictOpt = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for intervals")] = 1000,
    huber_delta: Annotated[float, typer.Option(help="Huber loss delta (log space)")] = 1e-3,
    checkpoint: CheckpointOpt = "final",
    seed: int = 0,
    runs_dir: RunsOpt = None,
):
    """Fit scaling laws (with bootstrap intervals), draw the scaling figure, write the report.

    Registered forecasts live in runs/<sweep>/predictions/ (for --from, beside the report
    directory) and are scored by every later report that has their rung's results.
    """
    from orchestrator.report_inputs import report_request
    from reports.console import summary
    from reports.report import run_report

    s = load_spec(spec) if spec is not None else None
    root = runs_root(runs_dir, s.storage if s is not None else None)
    check_reachable(root, write=False)
    say = lambda line: err.print(line, markup=False, highlight=False)  # noqa: E731
    fitting = dict(bootstrap=bootstrap, huber_delta=huber_delta, checkpoint=checkpoint, seed=seed)
    request = report_request(s, root, fit, from_file, out_dir, predict, say, **fitting)
    result = run_report(request, log=say)
    for item in summary(result, request.out_dir, predict, request.predict):
        out.print(item, highlight=False, soft_wrap=isinstance(item, str))


@app.command("eval")
@user_errors_exit_2
def eval_(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="a checkpoint dir (runs/<sweep>/<rung>/checkpoints/step_N, or its s3://… URI) or its export/"
        ),
    ],
    task: Annotated[
        list[str], typer.Option(help="task(s): point_tracking camera_pose depth box_tracking action")
    ],
    mode: Annotated[str, typer.Option(help="frozen | finetune")] = "frozen",
    spec: Annotated[Path | None, typer.Option(help="take readout and data settings from this spec")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="FORMAT:PATH, a dataset on disk for the task its format serves "
            f"({', '.join(EVAL_FORMATS)}); other tasks read the synthetic world",
        ),
    ] = None,
):
    """Evaluate one checkpoint's features on tasks and print the metrics (what `sweep run` fans out)."""
    from evals.checkpoint import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, task, mode=mode, spec=spec, data=data, progress=out.status)
    t = Table(title=f"{checkpoint} ({mode})")
    for col in ("task", "dataset", "split", "metric", "value", "± se", "trivial baseline"):
        t.add_column(col)
    for name, dataset, split, metric, *numbers in result.rows():
        t.add_row(name, dataset, split, metric, *("-" if v is None else f"{v:.4f}" for v in numbers))
    out.print(t)


@app.command("import-4ds")
@user_errors_exit_2
def import_4ds(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="a released 4DS backbone .npz (representations4d), e.g. scaling4d_dist_b.npz"),
    ],
    size: Annotated[str, typer.Option(help="B (4DS-B-dist-e, 88M) or e (4DS-e, 3.8B)")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="where to write the export (encoder.safetensors, rung.json)")
    ],
):
    """Import a released 4DS encoder as our export, every key and shape checked; evaluate it with
    `sweep eval`."""
    from models.fourds import import_4ds as run_import

    rung = run_import(checkpoint, size, out_dir)
    m = rung["model"]
    out.print(
        f"{checkpoint} -> {out_dir}: 4DS-{size}, {m['frames']}x{m['size']}x{m['size']} clips; "
        f"evaluate with: sweep eval {out_dir} --task depth --data scannet:PATH"
    )


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
    from data4d.preview import write_world_preview

    classes = write_world_preview(out_path, clips, frames, size, seed, split)
    out.print(f"wrote {out_path} ({clips} clips of {frames}x{size}x{size}; classes: {', '.join(classes)})")


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
    from orchestrator.bench import run_bench
    from orchestrator.bench_table import print_table

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
    runs_dir: RunsOpt = None,
    admin_password_file: Annotated[
        Path | None,
        typer.Option(
            help="file holding the admin password a --host other than 127.0.0.1 needs "
            "(else $SWEEP4D_UI_ADMIN_PASSWORD)"
        ),
    ] = None,
):
    """The MLflow dashboard on the sweep's tracking store."""
    from orchestrator.ui import serve

    def say(line: str) -> None:  # whole lines (a URL must stay clickable), shown at once even in a log file
        out.print(line, highlight=False, soft_wrap=True)
        out.file.flush()

    code = serve(spec, host, port, runs_dir, say=say, password_file=admin_password_file)
    raise typer.Exit(code)


# `sweep simulate`'s longer options.
ClusterOpt = Annotated[
    str, typer.Option(help="NxGxKIND (e.g. 128x8xH100), 'local' (this machine), or a cluster YAML file")
]
CalibrateOpt = Annotated[
    str | None, typer.Option(help="a finished sweep's directory or spec: use its measured durations")
]
DecodeOpt = Annotated[
    str, typer.Option(help="auto (real video: pre-cut clips) | clips | long | none: CPU decoding's limit")
]


@app.command()
@user_errors_exit_2
def simulate(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML")],
    cluster: ClusterOpt,
    failures: Annotated[str, typer.Option(help="none | llama3 | a rate per GPU-hour")] = "none",
    seeds: Annotated[int, typer.Option(min=1, help="repetitions (failures differ per seed)")] = 1,
    mfu: Annotated[str | None, typer.Option(help="MFU (default 0.4), or a `sweep bench --json` file")] = None,
    calibrate: CalibrateOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    gantt: Annotated[Path | None, typer.Option(help="write a Gantt chart PNG of seed 0")] = None,
    recommend: Annotated[
        bool, typer.Option(help="search checkpoint intervals, GPU counts, eval GPUs")
    ] = True,
    only: Annotated[list[str] | None, typer.Option(help="simulate only these rungs (repeatable)")] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1, help="as `sweep run --max-concurrent`")] = None,
    decode: DecodeOpt = "auto",
):
    """Run the sweep's own scheduling policy on a paper cluster, with failures: makespan, GPU-hours, Gantt."""
    from orchestrator.simulate.report import simulate_command

    say = lambda line: err.print(line, markup=False, highlight=False)  # noqa: E731
    options = (failures, seeds, mfu, calibrate, gantt, recommend, only, max_concurrent)
    lines, data = simulate_command(spec, cluster, *options, say=say, decode=decode)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        out.print("\n".join(lines), markup=False, highlight=False)
