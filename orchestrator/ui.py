"""`sweep ui`: MLflow's own UI, served on the sweep's tracking store, bound to 127.0.0.1 by default.

On any other interface it serves the whole store to whoever reaches the port, so it runs MLflow's
basic-auth app there, with an admin password the user sets (ADMIN_PASSWORD_VAR or a file): there is
no default. Its user database lives in a temporary directory for one session, so the password set
now is the one that holds (MLflow ignores a new admin password once its admin user exists); a lab's
lasting accounts belong on its own tracking server (README, "Running in a lab")."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from contracts.errors import UserError
from contracts.layout import most_recent_sweep, read_json
from contracts.spec import load_spec
from contracts.storage import runs_root, uri_of
from orchestrator.tracking import absolute_tracking_uri, is_server, sqlite_path

ADMIN_PASSWORD_VAR = "SWEEP4D_UI_ADMIN_PASSWORD"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class UIError(UserError):
    """The store is missing or the port is taken: exit 2."""


def resolve_store(spec: Path | None, runs_root: Path) -> tuple[str, str | None]:
    """(tracking URI, sweep name or None) from a spec, else from the most recent sweep, else the default
    store."""
    if spec is not None:
        s = load_spec(spec)
        return absolute_tracking_uri(s.tracking.uri), s.name
    recent = most_recent_sweep(runs_root)
    if recent is not None and (info := read_json(recent / "sweep.json")):
        return info["tracking_uri"], recent.name
    return absolute_tracking_uri("sqlite:///runs/mlflow.db"), None


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UIError(
                f"port {port} on {host} is already in use ({e.strerror}); pick another with --port"
            ) from None


def admin_password(host: str, password_file: Path | None) -> str | None:
    """The admin password a non-local `sweep ui` needs (None on 127.0.0.1: no login there)."""
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as e:
            raise UIError(f"cannot read the admin password file {password_file}: {e.strerror}") from None
        if not password:
            raise UIError(f"the admin password file {password_file} is empty")
        return password
    if password := os.environ.get(ADMIN_PASSWORD_VAR, "").strip():
        return password
    if host in LOCAL_HOSTS:
        return None
    raise UIError(
        f"`sweep ui --host {host}` would serve the whole tracking store to the network without a login: "
        f"set an admin password first (export {ADMIN_PASSWORD_VAR}=... or --admin-password-file FILE), "
        "then log in as `admin`"
    )


def auth_config(directory: Path) -> Path:
    """MLflow's basic-auth settings, its user database in `directory`; no password in the file."""
    ini = directory / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{directory / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return ini


def server_command(uri: str, host: str, port: int, artifact_root: Path, auth: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        *(["--app-name", "basic-auth"] if auth else []),
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        uri_of(artifact_root),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        *allowed_hosts(host, port),
    ]


def allowed_hosts(host: str, port: int) -> list[str]:
    """MLflow answers only the Host headers it allows (loopback names and private networks by
    default, against DNS rebinding): a UI bound to one other address must answer to it too."""
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):
        return []
    names = (host, "localhost", "127.0.0.1")
    return ["--allowed-hosts", ",".join(h for name in names for h in (name, f"{name}:{port}"))]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise UIError(f"the MLflow server exited with code {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise UIError(f"the MLflow server did not answer at {url} within {timeout:.0f} s")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(
    spec: Path | None,
    host: str,
    port: int,
    runs_dir: Path | str | None,
    say=print,
    password_file: Path | None = None,
) -> int:
    password = admin_password(host, password_file)
    root = runs_root(runs_dir, load_spec(spec).storage if spec is not None else None)
    uri, sweep = resolve_store(spec, root)
    if is_server(uri):
        raise UIError(f"this sweep's store is the MLflow server at {uri}: its UI is there already")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UIError(
            f"no tracking store at {db}: run `sweep run SPEC` first (or pass the spec whose store you want)"
        )
    check_port_free(host, port)
    cmd = server_command(uri, host, port, root / "mlartifacts", auth=password is not None)
    # kill / a closed terminal / a CI timeout stop the server too, the way Ctrl-C does (else it is orphaned).
    # SIGINT too, explicitly: a shell starting `sweep ui &` without job control ignores it otherwise.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    # MLflow 3's job runner (GenAI scorers: 8 huey processes polling the store) has nothing to do for a sweep.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    auth_dir = None
    if password is not None:  # passed in the child's environment only, never on its command line
        auth_dir = tempfile.TemporaryDirectory(prefix="sweep4d-ui-auth-")
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(auth_config(Path(auth_dir.name))), MLFLOW_AUTH_ADMIN_PASSWORD=password
        )
        # The auth app's CSRF protection needs a secret key; one per session unless the user set one.
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    # Its own process group, so Ctrl-C here stops the server and its workers together.
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    try:
        wait_healthy(url, proc)
        say(f"MLflow UI for {db or uri}: {url}" + (" (log in as admin)" if password else ""))
        if sweep:
            from mlflow.tracking import MlflowClient

            exp = MlflowClient(uri).get_experiment_by_name(sweep)
            if exp is not None:
                # /runs in the training view: MLflow 3 otherwise lands on its GenAI overview (traces),
                # empty here.
                say(
                    f"sweep '{sweep}': {url}/#/experiments/{exp.experiment_id}/runs"
                    "?workflowType=machine_learning"
                )
        say("Ctrl-C stops the server.")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            say("stopping the MLflow server")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                say("the MLflow server did not stop within 10 s of SIGTERM; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if auth_dir is not None:
            auth_dir.cleanup()
