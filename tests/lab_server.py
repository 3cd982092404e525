"""A lab's MLflow, started by the tests: PostgreSQL on 127.0.0.1 and `mlflow server` on it with MLflow's
basic-auth app (artifacts proxied by the server), both in their own process groups, stopped at the end.

Needs Debian's `postgresql` (initdb, pg_ctl). When it is missing, the first test that needs it installs it
with apt-get (as root, or through passwordless sudo), as tests/browser.py does for chromium. Where that
cannot work, the test fails with the command to run: an error, not a skip.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "apt-get install -y postgresql"
USER, PASSWORD = "researcher", "lab-Secret-7f3k"  # the account a sweep logs in with
ADMIN_PASSWORD = "lab-Admin-9q2w"


class PostgresMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _install_with_apt() -> str | None:
    """Install PostgreSQL; None on success, else why it could not be done."""
    if shutil.which("apt-get") is None:
        return "this machine has no apt-get"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        return "not root and no sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(
        "\nlab tests: installing postgresql with apt-get (once per machine)", file=sys.__stderr__, flush=True
    )
    wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in (
        ["apt-get", *wait_for_lock, "update", "-qq"],
        ["apt-get", *wait_for_lock, "install", "-y", "-qq", "postgresql"],
    ):
        done = subprocess.run(prefix + cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"`{' '.join(prefix + cmd)}` failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def find_postgres() -> Path:
    found = postgres_bin()
    if found is None:
        why = _install_with_apt()
        found = postgres_bin()
        if found is None:
            raise PostgresMissing(
                f"PostgreSQL (initdb) not found under /usr/lib/postgresql and could not be installed "
                f"({why or 'installed, yet still missing'}); run: {INSTALL_HINT}"
            )
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as Debian's `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(cond, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@dataclass
class LabServer:
    url: str  # the tracking URI a spec names
    database: str  # the PostgreSQL URI behind it (a direct store, for postgresql:// specs)
    username: str
    password: str
    admin_password: str
    artifacts: Path

    def env(self, password: str | None = None) -> dict[str, str]:
        """os.environ plus MLflow's credential variables for the sweep's account."""
        return {
            **os.environ,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": password or self.password,
        }


def cheap_password_checks(auth_database: str, passwords: dict[str, str]) -> None:
    """The auth app checks the password of every request against a scrypt hash: 730 ms a request on
    this 2-core machine (66 ms with this), which made a reconcile of two tiny rungs take 30 s. A
    throwaway test server stores 1,000-round PBKDF2 hashes instead; werkzeug checks either kind."""
    import psycopg
    from werkzeug.security import generate_password_hash

    with psycopg.connect(auth_database) as db:
        for user, password in passwords.items():
            cheap = generate_password_hash(password, method="pbkdf2:sha256:1000")
            db.execute("UPDATE users SET password_hash = %s WHERE username = %s", (cheap, user))


def start(work: Path):
    """Generator: start PostgreSQL and the auth-enabled MLflow server, yield a LabServer, stop both."""
    import requests

    bin_dir = find_postgres()
    # Its own directory under /tmp (pytest's are private to root, and postgres runs as `postgres`).
    data = Path(tempfile.mkdtemp(prefix="sweep4d-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    pg_port, port = free_port(), free_port()
    pg_log, mlflow_log = work / "postgres.log", work / "mlflow-server.log"
    procs = []
    try:
        subprocess.run(
            _as_postgres([str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust"]),
            check=True,
            capture_output=True,
        )
        postgres = subprocess.Popen(
            _as_postgres(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data / "db"),
                    "-p",
                    str(pg_port),
                    "-k",
                    str(data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",  # a throwaway test database
                ]
            ),
            stdout=open(pg_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(postgres)
        psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-q"]
        wait_until(
            lambda: subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode == 0,
            60,
            "PostgreSQL",
            postgres,
            pg_log,
        )
        for db in ("mlflow", "mlflow_auth"):
            subprocess.run([*psql, "-c", f"CREATE DATABASE {db}"], check=True, capture_output=True)
        database = f"postgresql://postgres@127.0.0.1:{pg_port}/mlflow"
        auth_ini = work / "basic_auth.ini"
        auth_ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = postgresql://postgres@127.0.0.1:{pg_port}/mlflow_auth\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        artifacts = work / "artifacts"
        env = {
            **os.environ,
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),  # the auth app's CSRF key
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--app-name",
                "basic-auth",
                "--backend-store-uri",
                database,
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env=env,
            stdout=open(mlflow_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(server)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return requests.get(f"{url}/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 180, "the MLflow server", server, mlflow_log)
        made = requests.post(
            f"{url}/api/2.0/mlflow/users/create",
            json={"username": USER, "password": PASSWORD},
            auth=("admin", ADMIN_PASSWORD),
            timeout=30,
        )
        assert made.status_code == 200, made.text
        cheap_password_checks(
            database.replace("/mlflow", "/mlflow_auth"), {USER: PASSWORD, "admin": ADMIN_PASSWORD}
        )
        yield LabServer(url, database, USER, PASSWORD, ADMIN_PASSWORD, artifacts)
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(data, ignore_errors=True)
