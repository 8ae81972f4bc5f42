"""Install, start, stop and query a local Label Studio server (its own virtualenv, headless).

Label Studio pins libraries (Django 5.2, pytz < 2023, pyarrow, openai < 2, ...) that clash with
Prefect and MLflow, so it lives in its own virtualenv at ``<repo>/.cache/label-studio-venv``;
the application only needs ``label-studio-sdk``.

Command line (run with the application's python)::

    dataeff label-studio install                 # once; no-op when already there
    dataeff label-studio start  [--port 8080] [--data-dir DIR] [--postgres]
    dataeff label-studio status [--port 8080] [--data-dir DIR]
    dataeff label-studio stop   [--port 8080] [--data-dir DIR]

Files kept in the data dir: ``label-studio.pid`` (process-group leader), ``label-studio.log``
(server output) and ``dataeff-credentials.json`` (mode 0600: username, password, API token).
The token is a secret: it is never printed or logged, and ``repr`` masks it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dataeff.errors import DataEffError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
LS_VERSION = "1.23.2"
DEFAULT_VENV = ROOT / ".cache" / "label-studio-venv"
DEFAULT_DATA_DIR = ROOT / ".cache" / "label-studio-data"
DEFAULT_PORT = 8080
DEFAULT_USERNAME = "dataeff@example.com"
PID_FILE = "label-studio.pid"
LOG_FILE = "label-studio.log"
CREDENTIALS_FILE = "dataeff-credentials.json"
_TOKEN_RE = re.compile(r"[0-9a-f]{40}")


class LabelStudioServerError(DataEffError):
    """The local Label Studio server could not be installed, started or stopped."""


# ----------------------------------------------------------------------------- install


def installed_version(venv: Path = DEFAULT_VENV) -> str | None:
    """Version of ``label-studio`` installed in ``venv`` (from its dist-info), or ``None``."""
    if not (venv / "bin" / "label-studio").exists():
        return None
    for dist in venv.glob("lib/python*/site-packages/label_studio-*.dist-info"):
        return dist.name[len("label_studio-") : -len(".dist-info")]
    return None


def install(venv: Path = DEFAULT_VENV, version: str = LS_VERSION, python: str = "python3") -> bool:
    """Install ``label-studio==version`` into its own virtualenv ``venv`` unless it is there.

    Returns:
        ``True`` when something was installed, ``False`` when it was already present.

    Raises:
        LabelStudioServerError: the venv could not be created or pip failed (the message says
            which command to re-run by hand).
    """
    venv = Path(venv)
    have = installed_version(venv)
    if have == version:
        log.info("Label Studio %s already installed in %s", version, venv)
        return False
    steps = []
    if not (venv / "bin" / "python").exists():
        steps.append([python, "-m", "venv", str(venv)])
    steps.append(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"label-studio=={version}"]
    )
    for cmd in steps:
        log.info("running: %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise LabelStudioServerError(
                f"installing Label Studio failed at `{' '.join(cmd)}` (exit {done.returncode}):\n"
                f"{done.stderr[-2000:]}\nfix the cause (network to PyPI? disk space?) and re-run "
                "`dataeff label-studio install`"
            )
    return True


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_status(url: str, token: str | None = None, timeout: float = 3.0) -> int | None:
    """HTTP status of a GET (``None`` when nothing answers)."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs and is a Label Studio process (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"label-studio" in cmdline or b"label_studio" in cmdline


def _write_secret_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON to a file readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    os.chmod(path, 0o600)


def _create_postgres_database(name: str, user: str, host: str, port: int) -> None:
    """Create database ``name`` on the Postgres server unless it exists (trust auth)."""
    try:
        import psycopg2
    except ImportError as exc:  # pragma: no cover - psycopg2-binary is a declared dependency
        raise LabelStudioServerError(
            "--postgres needs psycopg2 in the application venv: pip install psycopg2-binary"
        ) from exc
    try:
        conn = psycopg2.connect(dbname="postgres", user=user, host=host, port=port, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        raise LabelStudioServerError(
            f"cannot reach Postgres at {host}:{port} as {user!r} ({str(exc).strip()}); start Postgres or drop --postgres"
        ) from None
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
                log.info("created Postgres database %s", name)
    finally:
        conn.close()


# ----------------------------------------------------------------------------- the server


@dataclass
class LabelStudioServer:
    """A local, headless Label Studio server bound to 127.0.0.1.

    Args:
        port: TCP port (default 8080).
        data_dir: where Label Studio keeps its database/media, plus our pid, log and
            credentials files (default ``<repo>/.cache/label-studio-data``).
        token: the admin's legacy API token, 40 lowercase hex chars. ``None`` (default): read from
            the data dir's credentials file, or generate one and store it there (mode 0600).
            It is fixed at the first boot of a data dir; later starts must use the same one.
        username: the admin's e-mail (login of the web UI).
        password: the admin's password; ``None``: read from / generated into the credentials file.
        postgres: use the local Postgres (127.0.0.1:5432, trust auth) instead of SQLite; the
            database ``postgres_db`` is created when missing.
        venv: the Label Studio virtualenv.

    Use ``start()``/``stop()`` or ``with LabelStudioServer(...) as server:``. ``start`` reuses a
    server already healthy on this port that accepts the token (idempotent); leaving the
    ``with`` block stops the server only if this object started it.
    """

    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    token: str | None = field(default=None, repr=False)
    username: str = DEFAULT_USERNAME
    password: str | None = field(default=None, repr=False)
    postgres: bool = False
    postgres_db: str = "label_studio"
    postgres_user: str = "postgres"
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    venv: Path = DEFAULT_VENV
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False, compare=False)
    _owned: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.venv = Path(self.venv)
        self._load_or_create_credentials()

    def __repr__(self) -> str:
        return (
            f"LabelStudioServer(url={self.url!r}, data_dir={str(self.data_dir)!r}, username={self.username!r}, "
            f"token='***', postgres={self.postgres})"
        )

    # -- paths and credentials
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

    @property
    def api_token(self) -> str:
        """The admin's API token: ``token`` as given, stored or generated when the object was created."""
        if self.token is None:  # set by __post_init__; None only if a caller reset it
            raise LabelStudioServerError("no Label Studio token: create the LabelStudioServer again")
        return self.token

    def _load_or_create_credentials(self) -> None:
        stored: dict = {}
        if self.credentials_file.exists():
            try:
                stored = json.loads(self.credentials_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise LabelStudioServerError(
                    f"{self.credentials_file}: unreadable ({exc.__class__.__name__}); delete it only together with the data dir"
                ) from None
        if self.token is None:
            self.token = stored.get("token") or secrets.token_hex(20)
        if not _TOKEN_RE.fullmatch(self.token):
            raise LabelStudioServerError(
                "the Label Studio token must be 40 lowercase hex characters (e.g. secrets.token_hex(20))"
            )
        if stored.get("token") and stored["token"] != self.token:
            raise LabelStudioServerError(
                f"{self.data_dir} was initialised with another token (see {self.credentials_file}); "
                "pass token=None to use the stored one, or use a fresh data dir"
            )
        if self.password is None:
            self.password = stored.get("password") or secrets.token_urlsafe(12)
        wanted = {"username": self.username, "password": self.password, "token": self.token}
        if stored != wanted:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _write_secret_json(self.credentials_file, wanted)

    # -- state
    def pid(self) -> int | None:
        """Pid of the server recorded in the data dir, if that process still runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def healthy(self) -> bool:
        """Whether ``/health`` answers 200 on this port."""
        return _http_status(f"{self.url}/health") == 200

    def token_accepted(self) -> bool:
        """Whether the server on this port accepts our token."""
        return _http_status(f"{self.url}/api/current-user/whoami", token=self.token) == 200

    def status(self) -> dict:
        """``{"url", "pid", "healthy", "data_dir", "log", "credentials"}`` (no secrets)."""
        return {
            "url": self.url,
            "pid": self.pid(),
            "healthy": self.healthy(),
            "data_dir": str(self.data_dir),
            "log": str(self.log_file),
            "credentials": str(self.credentials_file),
        }

    def environment(self) -> dict[str, str]:
        """Environment of the server process (contains the secrets: never log it)."""
        if self.password is None:  # set by __post_init__; None only if a caller reset it
            raise LabelStudioServerError("no Label Studio password: create the LabelStudioServer again")
        env = dict(os.environ)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.api_token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LATEST_VERSION_CHECK="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        )
        if self.postgres:
            env.update(
                DJANGO_DB="default",
                POSTGRE_NAME=self.postgres_db,
                POSTGRE_USER=self.postgres_user,
                POSTGRE_PASSWORD="",
                POSTGRE_HOST=self.postgres_host,
                POSTGRE_PORT=str(self.postgres_port),
            )
        else:
            env.pop("DJANGO_DB", None)
        # This server listens on 127.0.0.1 only. Label Studio 1.23 refuses ML backends (ML_BLOCK_LOCAL_IP) and
        # webhooks (SSRF_PROTECTION_ENABLED) on loopback/private addresses by default, which would make
        # `dataeff ml-backend` on this machine impossible to connect; a value set in the environment wins.
        env.setdefault("ML_BLOCK_LOCAL_IP", "false")
        env.setdefault("SSRF_PROTECTION_ENABLED", "false")
        return env

    # -- lifecycle
    def start(self, timeout: float = 180.0) -> LabelStudioServer:
        """Start the server (or reuse a healthy one) and wait until ``/health`` answers.

        Args:
            timeout: seconds to wait for ``/health`` (first boot runs ~60 s of migrations on 2
                cores; a restart on the same data dir ~8 s).

        Raises:
            LabelStudioServerError: Label Studio is not installed, the port is taken by something
                that does not accept our token, the process died, or ``/health`` did not answer
                within ``timeout`` (the message quotes the end of the log).
        """
        if self.healthy() or (self.pid() and _port_open(self.port)):
            if self.pid() and not self.healthy():
                self._wait_healthy(timeout)
            if self.token_accepted():
                log.info("reusing the Label Studio server already running at %s", self.url)
                return self
            raise LabelStudioServerError(
                f"port {self.port} is taken by a server that does not accept the token stored in {self.credentials_file}; "
                "stop it or choose another --port"
            )
        if _port_open(self.port):
            raise LabelStudioServerError(f"port {self.port} is in use by another program; choose another --port")
        exe = self.venv / "bin" / "label-studio"
        if not exe.exists():
            raise LabelStudioServerError(
                f"Label Studio is not installed at {self.venv}; run `dataeff label-studio install`"
            )
        if self.postgres:
            _create_postgres_database(self.postgres_db, self.postgres_user, self.postgres_host, self.postgres_port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(exe), "start", "--no-browser", "--port", str(self.port), "--internal-host", "127.0.0.1"]
        log.info("starting Label Studio at %s (data dir %s, log %s)", self.url, self.data_dir, self.log_file)
        with open(self.log_file, "ab") as logfh:
            self._proc = subprocess.Popen(
                cmd,
                env=self.environment(),
                stdout=logfh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.data_dir,
            )
        self.pid_file.write_text(str(self._proc.pid))
        self._owned = True
        try:
            self._wait_healthy(timeout)
        except LabelStudioServerError:
            self.stop()
            raise
        if not self.token_accepted():
            self.stop()
            raise LabelStudioServerError(
                f"Label Studio started but rejects the token in {self.credentials_file}: the data dir "
                "was initialised with another token; use a fresh --data-dir"
            )
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self._proc is not None and self._proc.poll() is not None:
                raise LabelStudioServerError(
                    f"Label Studio exited with code {self._proc.returncode} while starting; last log lines "
                    f"({self.log_file}):\n{self._log_tail()}"
                )
            time.sleep(1.0)
        raise LabelStudioServerError(
            f"Label Studio did not answer {self.url}/health within {timeout:.0f} s; raise the timeout "
            f"(first boot runs migrations) or read {self.log_file}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(line.replace(self.api_token, "***") for line in text)

    def stop(self, timeout: float = 20.0) -> bool:
        """Terminate the server recorded in the data dir (its whole process group).

        SIGTERM first, SIGKILL after ``timeout`` seconds. Returns ``True`` when a server was
        stopped, ``False`` when none was running.
        """
        pid = self.pid()
        if pid is None and self._proc is not None and self._proc.poll() is None:
            pid = self._proc.pid
        stopped = False
        if pid is not None:
            try:
                pgid = os.getpgid(pid)
                os.killpg(pgid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and _pid_alive(pid):
                    if self._proc is not None:
                        self._proc.poll()
                    time.sleep(0.2)
                if _pid_alive(pid):
                    os.killpg(pgid, signal.SIGKILL)
                stopped = True
            except ProcessLookupError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        self._owned = False
        # Wait until the port is released so a restart on it does not collide.
        deadline = time.monotonic() + 10
        while stopped and time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.2)
        return stopped

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self._owned:
            self.stop()
