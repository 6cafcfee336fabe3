"""Start and stop a TorchServe (Java frontend + Python workers) that this process owns.

    with TorchServeProcess(model_store, models, workdir=tmp) as ts:   # free loopback ports by default
        requests.post(f"{ts.inference_url}/predictions/mirec_a", json={...})

- Before starting: every MAR with a recorded sha256 (`mirec package` writes it into package.json, `ModelServing.sha256`)
  is verified (a truncated or swapped MAR fails here, by name); the five ports must be free (the error names the
  port and, where the OS tells, the process holding it); a pid file left in the workdir by an earlier run is
  checked: a TorchServe whose owner is gone (an orphan) is stopped, one whose owner still runs is refused.
- Runs `python -m mirec.serving.tswatch --parent <this pid> -- torchserve --start --foreground ...` as the leader
  of its own session (process group), cwd = workdir, with TMPDIR/TEMP/LOG_LOCATION/METRICS_LOCATION under workdir:
  logs, the pid files and the unpacked models stay out of the repository and do not collide with another TorchServe
  on the machine; GLIBC_TUNABLES asks malloc for huge pages (the FAISS index; see tsconfig.HUGEPAGE_TUNABLE).
  The watchdog ties the group to this process: when this process dies (even by SIGKILL) the kernel's
  PR_SET_PDEATHSIG and a parent poll make it stop Java and the workers, so no orphan keeps the ports.
- Readiness (`wait_ready`): every model has all its workers READY (management API), and the processes listening on
  the inference and management ports are this TorchServe's own (a leftover TorchServe answering on those ports
  must not pass for ours). It fails fast, naming the model and its MAR, when TorchServe did not register a model
  (e.g. a corrupt archive) or a worker failed to load it, instead of waiting for the timeout.
- `alive()` / `exit_code()` for supervision (`mirec serve` exits non-zero when TorchServe dies).
- Five loopback ports: inference, management, metrics and TorchServe's two gRPC ports (free ones by
  default: the gRPC defaults 7070/7071 collide with any other TorchServe on the machine).
- The generated config.properties (profile `local`) binds to 127.0.0.1 and disables token auth;
  pass `profile="production"` to keep token auth on (then `token()` reads key_file.json).
- `stop()` sends SIGTERM to the process group, waits for every process of it (Java + workers) to
  exit, then SIGKILLs whatever is left, by pid. `torchserve --stop` is not used: it returns before
  Java exits and reads a pid file shared by every TorchServe of the user.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

from mirec.errors import MirecError
from mirec.serving.tsconfig import (ModelServing, ServerSettings, render_config_properties, render_log4j2,
                                   with_hugepage_malloc)

log = logging.getLogger(__name__)

PID_FILE = "mirec-torchserve.pid"


class TorchServeDied(MirecError):
    """The TorchServe this process started exited while it was being used (supervision)."""


def mar_sha256(path: str | Path) -> str:
    """sha256 of a MAR file, or of a no-archive model folder (relative paths + contents, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
        return h.hexdigest()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_model_store(model_store: str | Path, models: list[ModelServing]) -> list[str]:
    """Check every model's MAR exists and matches its recorded sha256; -> names of models without a record.
    Raises MirecError naming the MAR otherwise (a truncated MAR would make TorchServe 0.12 load no model at
    all, with an error that names no file)."""
    unchecked = []
    for m in models:
        path = Path(model_store) / m.mar
        if not path.exists():
            raise MirecError(f"model {m.name}: MAR {path} not found (model store {model_store})")
        if not m.sha256:
            unchecked.append(m.name)
            continue
        got = mar_sha256(path)
        if got != m.sha256:
            raise MirecError(f"model {m.name}: MAR {path} does not match its sha256 in package.json (expected "
                             f"{m.sha256[:16]}..., got {got[:16]}...): the file is truncated or was replaced; "
                             "package it again or fetch it again")
    return unchecked


def port_holder(port: int, host: str = "127.0.0.1") -> str:
    """Who listens on `port`: 'pid 123 (java ...)' when the OS tells us, else ''."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return ""
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                p = psutil.Process(c.pid)
                cmd = " ".join(p.cmdline())
                return f"pid {c.pid} ({p.name()}: {cmd[:120]})"
            except psutil.Error:
                return f"pid {c.pid}"
    return ""


def listener_pids(ports: list[int]) -> dict[int, int | None]:
    """port -> pid of the process listening on it (None: nobody, or the OS does not say)."""
    out: dict[int, int | None] = {p: None for p in ports}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return out
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in out and c.pid:
            out[c.laddr.port] = c.pid
    return out


def check_ports_free(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Raise MirecError naming the first port of `ports` ({what: port}) that cannot be bound on `host`."""
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                holder = port_holder(port, host)
                raise MirecError(f"port {port} ({what}) on {host} is in use"
                                 + (f" by {holder}" if holder else f": {exc.strerror}")
                                 + "; stop that process or choose other ports") from None


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


_LOAD_FAILED = re.compile(r"Failed to load model (\S+?),? exception.*$")
# the frontend's line when a worker died while loading (e.g. the handler module is missing from a truncated MAR):
# the handler never got to say "Failed to load model", so the worker's last exception line is the reason
_WORKER_DIED_LOADING = re.compile(r"Load model failed: (\S+?), error: (.*)$")
_WORKER_EXCEPTION = re.compile(r"MODEL_LOG - (\w+(?:Error|Exception): .*)$")


def _pythonpath(env: dict[str, str]) -> str:
    """PYTHONPATH that lets `python -m mirec.serving.tswatch` import this checkout's mirec."""
    import mirec

    root = str(Path(mirec.__file__).resolve().parents[1])
    cur = env.get("PYTHONPATH", "")
    return root if not cur else (cur if root in cur.split(os.pathsep) else f"{root}{os.pathsep}{cur}")


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The running process `pid` if it is the one created at `create_time` (pids are reused), else None."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - create_time) > 1.0 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def _group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM process group `pgid`, wait up to `grace_s` for it to empty, then SIGKILL it."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_members(pgid):  # zombies do not count: their parent reaps them
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
        self._out = None

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

    def all_ports(self) -> dict[str, int]:
        return {"TorchServe inference": self.ports[0], "TorchServe management": self.ports[1],
                "TorchServe metrics": self.ports[2], "TorchServe gRPC inference": self.grpc_ports[0],
                "TorchServe gRPC management": self.grpc_ports[1]}

    @property
    def pid_file(self) -> Path:
        return self.workdir / PID_FILE

    def _check_pid_file(self) -> None:
        """A TorchServe recorded in this workdir's pid file: stop it if its owner is gone (an orphan), refuse to
        start if its owner still runs. The recorded pid is the watchdog's, the leader of the TorchServe's process
        group; the group outlives its leader (a SIGKILLed watchdog leaves Java and its workers in it)."""
        p = self.pid_file
        if not p.exists():
            return
        try:
            rec = json.loads(p.read_text())
            pgid = int(rec["pid"])
            owner, owner_created = int(rec["owner_pid"]), float(rec["owner_create_time"])
        except (OSError, ValueError, KeyError, TypeError):
            p.unlink(missing_ok=True)
            return
        members = _group_members(pgid)
        if not any(str(self.workdir) in " ".join(_cmdline(m)) for m in members):
            p.unlink(missing_ok=True)  # nothing of ours left (or the pid now names something else): stale
            return
        if owner != os.getpid() and _same_process(owner, owner_created) is not None:
            raise MirecError(f"{self.workdir} is in use by a TorchServe (process group {pgid}) of a running process "
                             f"(pid {owner}); stop it or use another --workdir")
        log.warning("stopping an orphaned TorchServe (process group %d: %d processes) left in %s by an earlier run",
                    pgid, len(members), self.workdir)
        _kill_group(pgid, grace_s=10)
        p.unlink(missing_ok=True)

    def start(self, timeout_s: float = 120.0) -> "TorchServeProcess":
        if self.proc is not None:
            raise MirecError("TorchServe already started by this object")
        unchecked = verify_model_store(self.model_store, self.models)
        if unchecked:
            log.warning("no sha256 recorded for %s: MARs not verified (package them with this mirec version)",
                        ", ".join(unchecked))
        tmp = self.workdir / "tmp"
        for d in (self.workdir, tmp, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._check_pid_file()
        check_ports_free(self.all_ports(), self.host)
        cfg = self.workdir / "config.properties"
        cfg.write_text(self.config_text())
        log_cfg = self.workdir / "log4j2.xml"
        log_cfg.write_text(render_log4j2(self.access_log))
        env = {**with_hugepage_malloc(dict(os.environ)), "TMPDIR": str(tmp), "TEMP": str(tmp),
               "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir), **self.env}
        env.pop("TS_CONFIG_FILE", None)
        cmd = [_torchserve_bin(), "--start", "--foreground", "--ncs", "--model-store", str(self.model_store),
               "--ts-config", str(cfg), "--log-config", str(log_cfg)]
        # PDEATHSIG fires when the forking *thread* exits: only ask for it from the main thread (tswatch polls too)
        main_thread = threading.current_thread() is threading.main_thread()
        watch = [sys.executable, "-m", "mirec.serving.tswatch", "--parent", str(os.getpid()),
                 *(["--pdeathsig"] if main_thread else []), "--"]
        self._out = open(self.log_dir / "torchserve.stdout", "ab")
        self.proc = subprocess.Popen(watch + cmd, cwd=self.workdir, env={**env, "PYTHONPATH": _pythonpath(env)},
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        self._write_pid_file()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_pid_file(self) -> None:
        me = psutil.Process()
        try:
            created = psutil.Process(self.proc.pid).create_time()
        except psutil.Error:
            created = 0.0
        self.pid_file.write_text(json.dumps({"pid": self.proc.pid, "create_time": created, "owner_pid": me.pid,
                                             "owner_create_time": me.create_time(),
                                             "ports": list(self.ports) + list(self.grpc_ports)}))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

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

    def _own_pids(self) -> set[int]:
        self._track()
        return {pid for pid, p in self._procs.items() if p.is_running()}

    def check_ownership(self) -> None:
        """Raise unless the processes listening on the inference and management ports belong to this TorchServe."""
        listeners = listener_pids([self.ports[0], self.ports[1]])
        own = self._own_pids()
        for port, pid in listeners.items():
            if pid is not None and pid not in own:
                raise MirecError(f"port {port} is answered by {port_holder(port) or f'pid {pid}'}, not by the "
                                 f"TorchServe this process started (pid {self.proc.pid}); is another TorchServe running?")

    def _load_failures(self) -> tuple[str, str] | None:
        """(model, reason) when a worker could not load one of our models (else None): the handler's
        'Failed to load model X ...' in model_log, or the frontend's 'Load model failed: X, error: Worker died.'
        in ts_log with the worker's last exception line (a MAR missing its handler never reaches the handler)."""
        names = {m.name for m in self.models}
        model_log = self.log_dir / "model_log.log"
        lines = model_log.read_text(errors="replace").splitlines() if model_log.exists() else []
        for line in lines:
            m = _LOAD_FAILED.search(line)
            if m and m.group(1) in names:
                return m.group(1), m.group(0).strip()
        ts_log = self.log_dir / "ts_log.log"
        for line in ts_log.read_text(errors="replace").splitlines() if ts_log.exists() else ():
            m = _WORKER_DIED_LOADING.search(line)
            if m and m.group(1) in names:
                exceptions = [e.group(1).strip() for ln in lines if f"-{m.group(1)}_" in ln
                              and (e := _WORKER_EXCEPTION.search(ln))]
                return m.group(1), (exceptions[-1] if exceptions else m.group(0).strip())
        return None

    def _mar(self, name: str) -> str:
        m = next((m for m in self.models if m.name == name), None)
        return str(self.model_store / m.mar) if m else "?"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every model has all its workers READY (management API) on a TorchServe that is this process's
        own, or raise with the log tail. Fails fast when a model was not registered or a worker failed to load it."""
        deadline = time.monotonic() + timeout_s
        want = {m.name: m.workers for m in self.models}
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MirecError(f"TorchServe exited with code {self.proc.returncode}:\n{self.log_tail()}")
            self._track()
            failed = self._load_failures()
            if failed:
                name, reason = failed
                raise MirecError(f"TorchServe failed to load model {name} (MAR {self._mar(name)}): {reason} "
                                 f"(logs: {self.log_dir})")
            try:
                ok = True
                r = requests.get(f"{self.management_url}/models", timeout=2, headers=self._auth("management"))
                if r.status_code == 200:
                    self.check_ownership()
                    listed = {m["modelName"] for m in r.json().get("models", [])}
                    missing = [n for n in want if n not in listed]
                    if missing:
                        # TorchServe registers the snapshot's models before it binds its ports: a model missing
                        # now will never come (e.g. a corrupt archive: "Unexpected end of ZLIB input stream")
                        errors = [ln for ln in self.log_tail(200, files=("ts_log.log",)).splitlines() if "[ERROR]" in ln]
                        raise MirecError(f"TorchServe did not load model {missing[0]} (MAR {self._mar(missing[0])})"
                                         + (f": {errors[-1].split(' - ', 1)[-1].strip()}" if errors else "")
                                         + f" (logs: {self.log_dir})")
                else:
                    ok, last = False, f"management API: HTTP {r.status_code} {r.text[:200]}"
                for name, n in want.items() if ok else ():
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
                    self.check_ownership()
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

    def log_tail(self, n: int = 40, files: tuple[str, ...] = ("ts_log.log", "model_log.log", "torchserve.stdout")) -> str:
        out = []
        for name in files:
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
        if self._out is not None:
            self._out.close()
        self.pid_file.unlink(missing_ok=True)
        self.proc = None

    def __enter__(self) -> "TorchServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
