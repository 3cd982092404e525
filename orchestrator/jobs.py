"""`sweep run SPEC --submit`: the driver itself as a Ray Job, so that a closed laptop does not stop a sweep.

The job runs `python -m orchestrator run SPEC` on the cluster (`ray job submit` semantics through
JobSubmissionClient): the spec's directory is its working directory, uploaded with the job. That copy
is temporary, so the sweep's run directories and its MLflow store must be ones the cluster keeps: a
store or shared path (`storage:` / --runs-dir, absolute) and a tracking server or database, never a
relative directory or a SQLite file inside the copy. Credentials are not sent with the job (Ray keeps a
job's runtime environment in its job table, readable by anyone with the dashboard): the cluster's own
environment holds MLflow's variables.

`ray job stop` sends the driver SIGTERM, which flushes MLflow and reconciles it (the driver's SIGTERM
path); STOP_WAIT_S gives it time to before Ray's SIGKILL. Submitting again resumes from checkpoints.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import UserError
from contracts.spec import load_spec
from orchestrator.tracking import absolute_tracking_uri, check_tracking, redacted, sqlite_path

STOP_WAIT_S = 120  # Ray's default is 3 s between SIGTERM and SIGKILL: too short to flush and reconcile
AGENT_WAIT_S = 60  # a head node's job agent starts seconds after its dashboard answers
EXCLUDES = ["runs/", ".git/", ".venv/", "*.db", "__pycache__/"]


class SubmitError(UserError):
    """The sweep cannot run as a job as specified: exit 2, nothing submitted."""


@dataclass
class Submitted:
    job_id: str
    address: str
    entrypoint: str


def _runs_location(spec_path: Path, runs_dir: str | None) -> str:
    spec = load_spec(spec_path)
    where = runs_dir or spec.storage
    if where is None or not ("://" in str(where) or Path(str(where)).is_absolute()):
        raise SubmitError(
            "--submit: the job's working directory is a temporary copy, so run directories there would be "
            "lost; give the sweep a store the cluster keeps (storage: s3://... in the spec, or "
            "--runs-dir with an absolute shared path)"
        )
    uri = absolute_tracking_uri(spec.tracking.uri, spec_path.parent)
    if sqlite_path(uri) is not None:
        raise SubmitError(
            f"--submit: tracking.uri {redacted(uri)} is a SQLite file on this machine; a job needs a "
            "tracking server (http://host:port) or database (postgresql://...) the cluster reaches"
        )
    check_tracking(uri)  # the server answers and takes this user's login before anything is submitted
    return str(where)


def submit_job(
    spec_path: Path,
    address: str | None,
    runs_dir: str | None = None,
    only: str | None = None,
    max_concurrent: int | None = None,
) -> Submitted:
    """Submit the driver of `spec_path` as a Ray Job; -> its id. Nothing is submitted on bad input."""
    from ray.job_submission import JobSubmissionClient

    spec_path = spec_path.resolve()
    runs = _runs_location(spec_path, runs_dir)
    args = ["python", "-m", "orchestrator", "run", spec_path.name, "--address", "auto", "--runs-dir", runs]
    if only:
        args += ["--only", only]
    if max_concurrent:
        args += ["--max-concurrent", str(max_concurrent)]
    entrypoint = shlex.join(args)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SubmitError(f"no Ray job server at {address or 'the default address'}: {e}") from None
    name = load_spec(spec_path).name
    submission = {
        "entrypoint": entrypoint,
        "submission_id": f"sweep-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        "runtime_env": {
            "working_dir": str(spec_path.parent),
            "excludes": EXCLUDES,
            # none of the keys the driver's ray.init sets: Ray refuses to merge a clash
            "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)},
        },
        "metadata": {"sweep": name},
    }
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return Submitted(client.submit_job(**submission), client.get_address(), entrypoint)
        except RuntimeError as e:  # a head just started answers before its job agent is up
            if "No available agent" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise SubmitError(
                    f"the job server at {client.get_address()} has no agent to run jobs after "
                    f"{AGENT_WAIT_S} s (is the head node's dashboard agent running?): {e}"
                ) from None
            time.sleep(2)


def how_to_follow(job: Submitted) -> list[str]:
    a = shlex.quote(job.address)
    return [
        f"submitted the sweep driver as Ray job {job.job_id} to {job.address}",
        f"follow it:  ray job logs --address {a} --follow {job.job_id}",
        f"stop it:    ray job stop --address {a} {job.job_id}  (flushes MLflow; submit again to resume)",
        "meanwhile:  sweep status SPEC / sweep report SPEC from here read the store and the tracking server",
    ]


def submit_and_tell(spec_path: Path, address, runs_dir, only, max_concurrent, say=print) -> None:
    """`sweep run --submit`: submit, then say the job id and how to follow and stop it."""
    for line in how_to_follow(submit_job(spec_path, address, runs_dir, only, max_concurrent)):
        say(line)
