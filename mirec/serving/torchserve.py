"""Start and stop a TorchServe (Java frontend + Python workers) that this process owns.

    with TorchServeProcess(model_store, models, workdir=tmp) as ts:   # free loopback ports by default
        requests.post(f"{ts.inference_url}/predictions/mirec_a", json={...})

- Runs `torchserve --start --foreground` in its own session (process group), cwd = workdir, with
  TMPDIR/TEMP/LOG_LOCATION/METRICS_LOCATION under workdir: logs, the pid file and the unpacked
  models stay out of the repository and do not collide with another TorchServe on the machine;
  GLIBC_TUNABLES asks malloc for huge pages (the FAISS index; see tsconfig.HUGEPAGE_TUNABLE).
- Five loopback ports: inference, management, metrics and TorchServe's two gRPC ports (free ones by
  default: the gRPC defaults 7070/7071 collide with any other TorchServe on the machine).
- The generated config.properties (profile `local`) binds to 127.0.0.1 and disables token auth;
  pass `profile="production"` to keep token auth on (then `token()` reads key_file.json).
- `stop()` sends SIGTERM to the process group, waits for every process of it (Java + workers) to
  exit, then SIGKILLs whatever is left, by pid. `torchserve --stop` is not used: it returns before
  Java exits and reads a pid file shared by every TorchServe of the user.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from mirec.errors import MirecError
from mirec.serving.tsconfig import (ModelServing, ServerSettings, render_config_properties, render_log4j2,
                                   with_hugepage_malloc)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_block(count: int, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A base port such that base .. base+count-1 are all free now (for `mirec serve --ts-port`)."""
    for _ in range(tries):
        base = free_port(host)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise MirecError(f"no block of {count} free ports found")


def _torchserve_bin() -> str:
    exe = Path(sys.executable).with_name("torchserve")
    return str(exe) if exe.exists() else "torchserve"


class TorchServeProcess:
    def __init__(self, model_store: str | Path, models: list[ModelServing], workdir: str | Path,
                 ports: tuple[int, int, int] | None = None, profile: str = "local",
                 grpc_ports: tuple[int, int] | None = None,
                 env: dict[str, str] | None = None, vmargs: str = "-Xmx512m -XX:+UseSerialGC -Xss512k",
                 access_log: bool = False):
        self.model_store = Path(model_store).resolve()
        self.models = models
        self.workdir = Path(workdir).resolve()
        self.ports = ports or (free_port(), free_port(), free_port())
        self.grpc_ports = grpc_ports or (free_port(), free_port())  # TorchServe always opens gRPC too
        self.profile = profile
        self.env = env or {}
        self.vmargs = vmargs
        self.access_log = access_log
        self.proc: subprocess.Popen | None = None
        self._procs: dict[int, psutil.Process] = {}

    host = "127.0.0.1"

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.ports[0]}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports[2]}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def config_text(self) -> str:
        server = ServerSettings(profile=self.profile, host=self.host, inference_port=self.ports[0],
                                management_port=self.ports[1], metrics_port=self.ports[2],
                                grpc_inference_port=self.grpc_ports[0], grpc_management_port=self.grpc_ports[1],
                                model_store=str(self.model_store))
        text = render_config_properties(self.models, server)
        return text + f"vmargs={self.vmargs}\n" if self.vmargs else text

    def start(self, timeout_s: float = 120.0) -> "TorchServeProcess":
        if self.proc is not None:
            raise MirecError("TorchServe already started by this object")
        tmp = self.workdir / "tmp"
        for d in (self.workdir, tmp, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.properties"
        cfg.write_text(self.config_text())
        log_cfg = self.workdir / "log4j2.xml"
        log_cfg.write_text(render_log4j2(self.access_log))
        env = {**with_hugepage_malloc(dict(os.environ)), "TMPDIR": str(tmp), "TEMP": str(tmp),
               "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir), **self.env}
        env.pop("TS_CONFIG_FILE", None)
        cmd = [_torchserve_bin(), "--start", "--foreground", "--ncs", "--model-store", str(self.model_store),
               "--ts-config", str(cfg), "--log-config", str(log_cfg)]
        self._out = open(self.log_dir / "torchserve.stdout", "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _track(self) -> None:
        """Remember every process of our tree (so stop() can wait for them by pid)."""
        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self._procs.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every model has all its workers READY (management API), or raise with the log tail."""
        deadline = time.monotonic() + timeout_s
        want = {m.name: m.workers for m in self.models}
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MirecError(f"TorchServe exited with code {self.proc.returncode}:\n{self.log_tail()}")
            self._track()
            try:
                ok = True
                for name, n in want.items():
                    r = requests.get(f"{self.management_url}/models/{name}", timeout=2,
                                     headers=self._auth("management"))
                    if r.status_code != 200:
                        ok, last = False, f"{name}: HTTP {r.status_code} {r.text[:200]}"
                        break
                    workers = r.json()[0].get("workers", [])
                    ready = sum(w.get("status") == "READY" for w in workers)
                    if ready < n:
                        ok, last = False, f"{name}: {ready}/{n} workers READY"
                        break
                if ok:
                    self._track()
                    return
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"not listening yet ({type(exc).__name__})"
            time.sleep(0.25)
        raise MirecError(f"TorchServe not ready after {timeout_s:.0f}s ({last}):\n{self.log_tail()}")

    def token(self, kind: str = "inference") -> str | None:
        p = self.workdir / "key_file.json"
        if self.profile == "local" or not p.exists():
            return None
        try:
            return json.loads(p.read_text())[kind]["key"]
        except (ValueError, KeyError):  # TorchServe is still writing the file
            return None

    def _auth(self, kind: str) -> dict:
        t = self.token(kind)
        return {"Authorization": f"Bearer {t}"} if t else {}

    def log_tail(self, n: int = 40) -> str:
        out = []
        for name in ("ts_log.log", "model_log.log", "torchserve.stdout"):
            p = self.log_dir / name
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(out)

    def pids(self) -> list[int]:
        self._track()
        return [pid for pid, p in self._procs.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        self._track()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: the launcher, Java and its workers
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.1)
            self.proc.poll()
        for pid in self.pids():  # still alive: kill by pid
            try:
                self._procs[pid].kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self._procs.values()), timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()
        self.proc = None

    def __enter__(self) -> "TorchServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
