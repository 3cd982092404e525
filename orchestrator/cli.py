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
from rich.table import Table

from orchestrator.spec import SpecError, human_count, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Scaling-law sweeps for 4D video representations.")
world_app = typer.Typer(no_args_is_help=True, help="Look at the synthetic 4D world.")
app.add_typer(world_app, name="world")
# Piped output (logs, CI) gets a wide console instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean 'fix your input', from every layer that raises them."""
    from models.export import ExportError

    errors: list[type[Exception]] = [SpecError, ExportError]
    for module, name in (("data4d.readers", "DataError"), ("reports.collect", "ReportError"), ("orchestrator.ui", "UIError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def user_errors_exit_2(fn):
    """One clear message and exit code 2 for input a user can fix; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            err.print(f"[bold red]error:[/] {getattr(e, 'message', None) or e}", highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper


SpecArg = Annotated[Path, typer.Argument(help="sweep spec YAML, e.g. sweeps/local_ladder.yaml")]


@app.command()
@user_errors_exit_2
def validate(spec: SpecArg):
    """Check a sweep spec and print its resolved rungs."""
    s = load_spec(spec)
    out.print(f"{spec}: valid sweep '{s.name}' with {len(s.ladder)} rungs: " + ", ".join(r.key for r in s.rungs()))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@app.command()
@user_errors_exit_2
def plan(
    spec: SpecArg,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    mfu: Annotated[float, typer.Option(help="assumed model FLOPs utilisation for GPU-hours")] = 0.4,
    peak_tflops: Annotated[float, typer.Option(help="per-GPU peak TFLOP/s (H100 SXM bf16 dense: 989)")] = 989.0,
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
        for col in ("rung", "shape w/d/mlp/h", "enc params", "dec params", "FLOPs/clip", "train FLOPs", "steps x batch",
                    "GPUs", "mem/GPU", "GPU-h"):
            t.add_column(col, justify="right")
        for p in plans:
            t.add_row(
                p.key, p.shape, human_count(p.encoder_params), human_count(p.decoder_params), f"{p.flops_per_clip:.2e}",
                f"{p.train_flops:.2e}", f"{p.steps} x {p.batch_size}", str(p.gpus) if p.gpus else f"cpu x{p.workers}",
                _gib(p.mem_per_gpu_bytes) + ("" if p.fits else " !"), f"{p.gpu_hours:,.0f}" if p.gpus else "-",
            )
        t.add_section()
        gpu_hours = sum(p.gpu_hours for p in plans)
        t.add_row("total", "", "", "", "", f"{sum(p.train_flops for p in plans):.2e}", "", "", "",
                  f"{gpu_hours:,.0f}" if gpu_hours else "-")
        out.print(t)
        out.print(f"GPU-hours at {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s per GPU.")
    for p in plans:
        if not p.fits:
            err.print(
                f"[yellow]warning:[/] rung {p.name} needs ~{_gib(p.mem_per_gpu_bytes)} per GPU on {p.gpus} GPUs, more than "
                f"{gpu_memory_gib:g} GiB: give it more GPUs, a smaller micro_batch_size, or activation_checkpointing"
            )


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
