"""Real local servers the tests start and stop themselves (each on a free loopback port, in a temp dir):

- `S3Server`: moto's standalone server (`python -m moto.server`, moto[server]), a real S3-compatible HTTP
  endpoint (buckets, objects, multipart, SigV4-signed requests from botocore/s3fs). A STAND-IN FOR S3: it is not
  AWS S3 nor MinIO, and it does not verify the signature's secret (moto's IAM checks are off); clients reach it
  through AWS_ENDPOINT_URL + AWS_ACCESS_KEY_ID/SECRET exactly as they reach MinIO or S3 in production.
- `PostgresServer`: Debian's PostgreSQL (`apt-get install postgresql`, scripts/get-test-services.sh): initdb +
  postgres on 127.0.0.1, run as the `postgres` OS user when the tests run as root (postgres refuses root).

Tests that need one skip with the reason when it cannot be started here (`S3Server.available()`, ...).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, wait_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:] if log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {wait_s}s")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class S3Server:
    """moto_server on 127.0.0.1:<port>; `env` holds what an S3 client needs (credentials + endpoint)."""

    ACCESS_KEY, SECRET_KEY = "mirec-test-access", "mirec-test-secret"

    def __init__(self, workdir: Path):
        self.workdir, self.port = workdir, free_port()
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> str | None:
        """None when it can start, else why not."""
        try:
            import moto.server  # noqa: F401
            import s3fs  # noqa: F401
        except ImportError as exc:
            return f"moto[server] / s3fs not installed ({exc}; pip install -r requirements.lock)"
        return None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> "S3Server":
        log = self.workdir / "moto.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, 30, "moto_server", log)
        return self

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.ACCESS_KEY,
                     aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1").create_bucket(Bucket=name)

    @classmethod
    @contextlib.contextmanager
    def with_bucket(cls, workdir: Path, bucket: str):
        """Started, with `bucket` made and the credentials/endpoint in os.environ (as the pipeline's and the
        chart's Secrets put them); stopped and the environment restored on exit."""
        srv = cls(workdir).start()
        mp = pytest.MonkeyPatch()
        try:
            srv.make_bucket(bucket)
            for k, v in srv.env.items():
                mp.setenv(k, v)
            yield srv
        finally:
            mp.undo()
            srv.stop()

    def stop(self) -> None:
        _stop(self.proc)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


class PostgresServer:
    """A throw-away PostgreSQL cluster (initdb) on 127.0.0.1:<port>, trust auth, database `feast`."""

    def __init__(self, workdir: Path | None = None):
        # its own folder directly under the temp dir: pytest's tmp_path sits below root-only (0700) folders,
        # which the `postgres` user could not traverse
        import tempfile

        self.workdir = Path(tempfile.mkdtemp(prefix="mirec-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.data = self.workdir / "pgdata"

    @staticmethod
    def available() -> str | None:
        if not (_pg_bin("initdb") and _pg_bin("postgres")):
            return "PostgreSQL not installed (bash scripts/get-test-services.sh installs Debian's postgresql)"
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no `postgres` OS user to run PostgreSQL as"
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            return f"psycopg not installed ({exc})"
        return None

    @staticmethod
    def _as_pg() -> dict:
        """Popen arguments that run the child as `postgres` when we are root (the child IS postgres: signals reach it)."""
        return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}

    def start(self) -> "PostgresServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            os.chmod(self.workdir, 0o700)
        log = self.workdir / "postgres.log"
        init = subprocess.run([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                               "-E", "UTF8"], capture_output=True, text=True, timeout=120, cwd=self.workdir,
                              **self._as_pg())
        if init.returncode:
            raise RuntimeError(f"initdb failed ({init.returncode}): {(init.stderr or init.stdout)[-1500:]}")
        self.proc = subprocess.Popen([_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                                      "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}",
                                      "-c", "fsync=off", "-c", "full_page_writes=off"], cwd=self.workdir,
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     **self._as_pg())
        _wait_port(self.port, self.proc, 60, "postgres", log)
        import psycopg

        deadline = time.monotonic() + 30
        while True:  # listening is not yet accepting: wait for a real connection
            try:
                with psycopg.connect(self.url("postgres", driver=False), autocommit=True) as c:
                    c.execute("CREATE DATABASE feast")
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def url(self, db: str = "feast", driver: bool = True) -> str:
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # "fast shutdown"
        shutil.rmtree(self.workdir, ignore_errors=True)
