"""Chaos: run a small sweep, SIGKILL processes of chosen kinds at moments drawn from a seed, rerun
`sweep run` until the sweep completes, then check that nothing was lost or done twice.

    python benchmarks/chaos.py --kills 10 --seed 7 --kinds driver,train_worker,eval,tracker
    python benchmarks/chaos.py --kills 3 --kinds train_worker,eval,tracker --in-order  # each kind once

Kinds are drawn from the seed, and a kind absent for a while is swapped for a live one; with
--in-order the kills go through the kinds in the given order (cycling), each waiting until one of its
kind is alive, so every kind is hit (only the delays are drawn).

Kinds: driver (the `sweep run` process; the sweep is then run again), train_worker (a
ray::RayTrainWorker: Ray Train restarts the group from its checkpoint), eval (a
ray::eval_task worker: the driver retries the eval), tracker (the ray::Tracker actor: Ray
restarts it and the driver reconciles MLflow from disk).

Checks, against an uninterrupted run of the same spec: every rung trained to its last step
with a bitwise-equal loss curve (metrics.jsonl); every eval done, started again only when a
kill found it running (its record's `starts`); MLflow's metric histories equal to the disk
records (no missing point, no step twice, equal results); exactly one parent run and one
child run per rung; the results table (`reports.collect.collect_mlflow`, what `sweep report`
fits) equal. Exit status 0 when every check passes. Progress lines go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
from mlflow.tracking import MlflowClient

from contracts.layout import RungPaths, read_json, read_jsonl
from contracts.names import ROLE_TAG, RUNG_KEY_TAG
from contracts.spec import load_spec
from orchestrator.reconcile import differences, disk_points
from reports.collect import collect_mlflow

ROOT = Path(__file__).resolve().parent.parent
SWEEP = [sys.executable, "-m", "orchestrator"]
KINDS = {
    "driver": None,
    "train_worker": "ray::RayTrainWorker",
    "eval": "ray::eval_task",  # orchestrator.raycluster.eval_task (a reference's is reference_eval_task)
    "tracker": "ray::Tracker",
}
# Kills that can interrupt an eval in flight (its record then counts a second attempt).
INTERRUPTS_EVALS = ("driver", "eval")
FALLBACK_AFTER_S = 45  # how long a planned kind may be absent before another kind is killed instead

SPEC = """\
name: chaos
data: {{frames: 4, resolution: 16, tubelet: [2, 8, 8], world: {{objects: 2, points: 8}}}}
pretraining:
  mask_ratio: 0.5
  decoder: {{width: 16, depth: 1, mlp: 32, heads: 2}}
  optimizer: {{lr: 3.0e-3}}
  batch_size: 8
  steps: {steps_a}
  checkpoint_interval: 8
  cpu_workers: 2
ladder:
  - {{name: a, width: 16, depth: 1, mlp: 32, heads: 2}}
{rung_b}evals:
  tasks: [depth, action]
  checkpoints: all
  readout: {{width: 16, heads: 2, epochs: 2, batch_size: 8, train_clips: 16, val_clips: 8, test_clips: 8}}
"""


def say(line: str) -> None:
    print(line, flush=True)


T0 = time.time()  # the timeline's zero: when this script started
# Lines of a `sweep run` log worth a timestamp: cluster up, tracking open, rung submitted and trained,
# worker-group restarts, eval failures and retries, the tracker's restart, the end.
MILESTONES = (
    "Ray: ",
    "reconciled ",
    "restored",
    "] submitted",
    "] trained to step",
    "] worker died",
    "tracker actor was restarted",
    "] eval ",
    "interrupted",
    "FAILED",
    "': done in",
)
EVALS_DONE = re.compile(r"evals (\d+)/(\d+)")
RUNG_STATE = re.compile(r"^(\S+): (\w+) step ")  # the live table's line: "<rung>: running step 3/8 ..."


def stamp(line: str) -> None:
    """A timeline line: seconds since the script started, then the event."""
    say(f"{time.time() - T0:6.1f}s  {line}")


class Timeline:
    """Follows one `sweep run` log: stamps its milestones, each rung's state changes (queued, running,
    done) and each change of its evals-done count as they appear (read every poll), so a slow phase
    shows in the chaos output."""

    def __init__(self, path: Path, label: str):
        self.path, self.label, self.pos, self.evals, self.states = path, label, 0, None, {}
        self.reconciled = False  # the driver is past Ray's start and has opened MLflow

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.pos += end
        for line in data[:end].decode(errors="replace").splitlines():
            line = line.strip()
            self.reconciled |= line.startswith("reconciled ")
            if any(m in line for m in MILESTONES):
                stamp(f"{self.label}: {line[:160]}")
            elif (m := RUNG_STATE.match(line)) and self.states.get(m.group(1)) != m.group(2):
                self.states[m.group(1)] = m.group(2)
                stamp(f"{self.label}: {line[:160]}")
            elif (m := EVALS_DONE.search(line)) and m.group(2) != "0" and m.group(0) != self.evals:
                self.evals = m.group(0)
                stamp(f"{self.label}: {m.group(0)} done")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_cmd(work: Path) -> list[str]:
    return [*SWEEP, "run", "spec.yaml", "--max-concurrent", "1", "--num-cpus", "3"]


def start(work: Path, log) -> subprocess.Popen:
    return subprocess.Popen(
        run_cmd(work), cwd=work, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def targets(proc: subprocess.Popen, kind: str) -> list[psutil.Process]:
    """The live processes of a kind under this driver (Ray titles its workers ray::<Class>)."""
    if kind == "driver":
        return [psutil.Process(proc.pid)] if proc.poll() is None else []
    found = []
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []
    for p in children:
        try:
            if " ".join(p.cmdline()).startswith(KINDS[kind]):
                found.append(p)
        except psutil.Error:
            continue
    return found


def bury(proc: subprocess.Popen, tree: list[psutil.Process]) -> None:
    """After the driver died: give its Ray processes a moment to notice, then make sure they are gone
    (a machine that lost its driver to a crash loses them too), so no stale worker writes on."""
    proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def running_evals(work: Path) -> set[str]:
    return {
        str(p.relative_to(work))
        for p in work.glob("runs/chaos/*/evals/*/*.json")
        if (read_json(p) or {}).get("state") == "running"
    }


def kill_plan(
    kills: int, kinds: list[str], seed: int, delay: tuple[float, float], in_order: bool
) -> list[tuple[str, float, float]]:
    """(kind, seconds after the previous kill, a uniform draw that picks the victim) per kill."""
    rng = random.Random(seed)
    return [
        (kinds[i % len(kinds)] if in_order else rng.choice(kinds), rng.uniform(*delay), rng.random())
        for i in range(kills)
    ]


def stand_in(
    proc: subprocess.Popen, kinds: list[str], planned: str, waited: float, pick: float
) -> str | None:
    """None of the planned kind for a while (no evals left, training over): another kind that is alive,
    the driver last (only the driver is alive while Ray starts); None when nothing may stand in yet."""
    others = [k for k in kinds if k not in (planned, "driver") and targets(proc, k)]
    if not others:
        others = [k for k in kinds if k == "driver" and waited >= 2 * FALLBACK_AFTER_S]
    return others[int(pick * len(others))] if others else None


def chaos(
    work: Path,
    kills: int,
    kinds: list[str],
    seed: int,
    max_runs: int,
    delay: tuple[float, float],
    in_order: bool = False,
) -> dict:
    plan = kill_plan(kills, kinds, seed, delay, in_order)
    made, runs, outputs = [], 0, []
    t0 = time.time()
    while runs < max_runs:
        runs += 1
        log_path = work / f"run{runs}.log"
        with open(log_path, "w") as log:
            proc = start(work, log)
            stamp(f"run {runs}: `sweep run` started")
            timeline = Timeline(log_path, f"run {runs}")
            since = None  # the clock of the next kill starts once the driver is past Ray's start
            killed_driver = False
            while proc.poll() is None:
                time.sleep(0.2)
                timeline.poll()
                if since is None:
                    if not timeline.reconciled:
                        continue
                    since = time.time()
                if len(made) >= len(plan) or time.time() - since < plan[len(made)][1]:
                    continue
                kind, _, pick = plan[len(made)]
                found = targets(proc, kind)
                if not found:
                    waited = time.time() - since - plan[len(made)][1]
                    if in_order or waited < FALLBACK_AFTER_S:
                        continue
                    kind = stand_in(proc, kinds, kind, waited, pick)
                    found = targets(proc, kind) if kind else []
                    if not found:
                        continue
                victim = found[int(pick * len(found))]
                tree = psutil.Process(proc.pid).children(recursive=True) if kind == "driver" else []
                evals = running_evals(work)
                try:
                    victim.kill()
                except psutil.Error:
                    continue
                made.append(
                    {
                        "kind": kind,
                        "planned": plan[len(made)][0],
                        "pid": victim.pid,
                        "run": runs,
                        "at_s": round(time.time() - t0, 1),
                        "evals_running": sorted(evals),
                    }
                )
                stamp(
                    f"kill {len(made)}/{len(plan)}: {kind} (pid {victim.pid}) in run {runs}, "
                    f"{made[-1]['at_s']:.0f}s into the chaos phase"
                    + ("" if kind == made[-1]["planned"] else f" (planned {made[-1]['planned']}: none alive)")
                    + (f", evals running: {len(evals)}" if evals else "")
                )
                since = time.time()
                if kind == "driver":
                    bury(proc, tree)
                    killed_driver = True
                    break
        timeline.poll()
        out = log_path.read_text()
        outputs.append(out)
        code = proc.returncode
        if code == 0 and not killed_driver:
            stamp(f"run {runs} completed the sweep")
            break
        if not killed_driver:
            stamp(f"run {runs} exited {code} (a kill it could not absorb); running the sweep again")
    return {
        "kills": made,
        "runs": runs,
        "outputs": outputs,
        "seconds": time.time() - t0,
        "planned": [p[0] for p in plan],
    }


# ------------------------------------------------------------------ checks


def rung_dirs(work: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted((work / "runs" / "chaos").glob("*-*")) if (d / "info.json").exists()}


def losses(d: Path) -> list[tuple[int, float]]:
    return [(r["step"], r.get("train/loss")) for r in read_jsonl(d / "metrics.jsonl")]


def check(base: Path, work: Path, made: list[dict]) -> list[str]:
    problems = []
    spec = load_spec(work / "spec.yaml")
    want, got = rung_dirs(base), rung_dirs(work)
    if sorted(want) != sorted(got) or len(got) != len(spec.ladder):
        problems.append(f"rung dirs {sorted(got)} != {sorted(want)}")
    for r in spec.rungs():
        d, b = got.get(r.key), want.get(r.key)
        if d is None or b is None:
            continue
        curve = losses(d)
        if [s for s, _ in curve] != list(range(1, r.steps + 1)):
            problems.append(f"[{r.key}] metrics.jsonl steps are not 1..{r.steps}")
        if curve != losses(b):
            problems.append(f"[{r.key}] loss curve differs from the uninterrupted run's")
        for rec_path in sorted(b.glob("evals/*/*.json")):
            rel = rec_path.relative_to(b)
            rec = json.loads((d / rel).read_text()) if (d / rel).exists() else {}
            if rec.get("state") != "done":
                problems.append(f"[{r.key}] eval {rel} is {rec.get('state')}")
                continue
            # An attempt beyond the first is allowed only for a kill that found this eval running.
            name = str((d / rel).relative_to(work))
            allowed = 1 + sum(name in k["evals_running"] for k in made if k["kind"] in INTERRUPTS_EVALS)
            if rec.get("starts", 0) > allowed:
                problems.append(
                    f"[{r.key}] eval {rel} started {rec.get('starts')} times, kills explain {allowed}"
                )
    stores = {}
    for label, root in (("chaos", work), ("baseline", base)):
        client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("chaos").experiment_id])
        stores[label] = (client, runs)
    client, runs = stores["chaos"]
    roles = sorted(run.data.tags.get(ROLE_TAG, "?") for run in runs)
    if roles != ["rung"] * len(spec.ladder) + ["sweep"]:
        problems.append(f"MLflow runs by role: {roles}")
    for run in runs:
        key = run.data.tags.get(RUNG_KEY_TAG)
        if run.data.tags.get(ROLE_TAG) == "rung" and key in got:
            problems += [
                f"[{key}] MLflow: {p}"
                for p in differences(client, run.info.run_id, disk_points(RungPaths(got[key])))
            ]
    tables = {
        label: collect_mlflow(f"sqlite:///{root / 'runs' / 'mlflow.db'}", "chaos")
        for label, root in (("chaos", work), ("baseline", base))
    }
    cols = ["rung_key", "step", "task", "mode", "metric", "value"]
    rows = {label: sorted(map(tuple, t[cols].astype(str).values.tolist())) for label, t in tables.items()}
    if rows["chaos"] != rows["baseline"]:
        diff = set(rows["chaos"]) ^ set(rows["baseline"])
        problems.append(
            f"results table differs from the uninterrupted run's in {len(diff)} rows, e.g. {sorted(diff)[:3]}"
        )
    return problems


RUNG_B = "  - {{name: b, width: 32, depth: 2, mlp: 64, heads: 2, steps: {steps_b}}}\n"


def prepare(work: Path, steps_a: int, steps_b: int | None) -> None:
    """The spec: rungs a and b, or rung a alone when steps_b is None."""
    work.mkdir(parents=True, exist_ok=True)
    rung_b = RUNG_B.format(steps_b=steps_b) if steps_b is not None else ""
    (work / "spec.yaml").write_text(textwrap.dedent(SPEC.format(steps_a=steps_a, rung_b=rung_b)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="driver,train_worker,eval,tracker")
    ap.add_argument("--work", type=Path, default=Path("runs-chaos"))
    ap.add_argument("--steps", default="24,48", help="steps of rung a and rung b (one number: rung a alone)")
    ap.add_argument("--delay", default="3,12", help="seconds between kills: drawn uniformly in [lo, hi]")
    ap.add_argument("--max-runs", type=int, default=20)
    ap.add_argument(
        "--in-order", action="store_true", help="kill the kinds in the given order, each once per cycle"
    )
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if bad := [k for k in kinds if k not in KINDS]:
        ap.error(f"unknown kinds {bad}; choose from {', '.join(KINDS)}")
    steps_a, steps_b = (list(map(int, args.steps.split(","))) + [None])[:2]
    lo, hi = map(float, args.delay.split(","))
    base, work = args.work.resolve() / "baseline", args.work.resolve() / "chaos"
    for d in (base, work):
        if d.exists():
            sys.exit(f"{d} exists: pass a fresh --work")
        prepare(d, steps_a, steps_b)
    t0 = time.time()
    stamp(f"baseline: an uninterrupted run in {base}")
    with open(base / "run.log", "w") as log:
        proc = subprocess.Popen(run_cmd(base), cwd=base, env=env(), stdout=log, stderr=subprocess.STDOUT)
        timeline = Timeline(base / "run.log", "baseline")
        while proc.poll() is None:
            time.sleep(0.2)
            timeline.poll()
        timeline.poll()
        code = proc.returncode
    if code != 0:
        say(f"the uninterrupted run failed ({code}): see {base / 'run.log'}")
        return 1
    kinds_text = ", ".join(kinds) + (" in that order" if args.in_order else "")
    stamp(f"baseline in {time.time() - t0:.0f}s; chaos: {args.kills} kills of {kinds_text}, seed {args.seed}")
    result = chaos(work, args.kills, kinds, args.seed, args.max_runs, (lo, hi), args.in_order)
    # No `sweep sync` before the checks: MLflow is checked as the last run left it (that run reconciled
    # it when it closed), so a point that run failed to restore is a failure, not repaired here.
    by_kind = {}
    for k in result["kills"]:
        by_kind[k["kind"]] = by_kind.get(k["kind"], 0) + 1
    attempts = sum(
        json.loads(p.read_text()).get("starts", 1) - 1 for p in work.glob("runs/chaos/*/evals/*/*.json")
    )
    say(
        f"kills made: {len(result['kills'])} ({', '.join(f'{n} {k}' for k, n in sorted(by_kind.items()))}); "
        f"sweep runs: {result['runs']}; evals re-run after a kill: {attempts}; "
        f"chaos phase {result['seconds']:.0f}s"
    )
    stamp("checking against the baseline")
    problems = check(base, work, result["kills"])
    if len(result["kills"]) < args.kills:
        problems.append(
            f"only {len(result['kills'])} of {args.kills} kills were made before the sweep completed"
        )
    for p in problems:
        say(f"FAIL {p}")
    say(
        ("PASS: every check" if not problems else f"{len(problems)} check(s) failed")
        + f" ({time.time() - t0:.0f}s in all)"
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
