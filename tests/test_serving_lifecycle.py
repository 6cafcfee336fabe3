"""Lifecycle of `mirec serve` / `TorchServeProcess` (issue 15, item 3), with real processes and signals on loopback:
ports checked before anything starts (the error names the port and the process); the server answering must be
this TorchServe's own; TorchServe tied to its parent (the tswatch watchdog: PR_SET_PDEATHSIG + parent polling)
and a pid file that stops an orphan or refuses a workdir in use; MAR sha256 recorded by `mirec package` and
verified before start; fail fast, naming the MAR, when a model does not load; supervision (`mirec serve` exits 1
when TorchServe dies, and takes TorchServe down when it is killed itself).

Tests without Java use stand-in processes; those marked with Java start TorchServe 0.12 (marker `slow`)."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from mirec.errors import MirecError
from mirec.serving.torchserve import TorchServeProcess, free_port, free_port_block, mar_sha256
from mirec.serving.tsconfig import ModelServing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from mirec.cli import run; sys.argv[0] = 'mirec'; run()"
java = pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed (TorchServe needs it)")


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    """Two tiny packaged candidates (`mirec package` with in-memory models) + a MAR whose handler cannot load."""
    from mirec.serving.packaging import PackageSpec, build_mar, package
    from mirec.serving.testing import items_frame, tiny_model

    root = tmp_path_factory.mktemp("lifecycle")
    items = items_frame()
    a, ca = tiny_model("comirec_sa", seed=0)
    b, cb = tiny_model("mind", seed=1)
    spec = PackageSpec.model_validate({"out_dir": str(root / "pkg"), "candidates": [{"name": "mirec_a"},
                                                                                     {"name": "mirec_b"}]})
    res = package(spec, candidates={"mirec_a": (a, ca, items, {}), "mirec_b": (b, cb, items, {})}, log=lambda *_: None)
    stage = root / "bad_stage"
    stage.mkdir()
    (stage / "note.txt").write_text("a model whose handler fails at load")
    handler = root / "bad_handler.py"
    handler.write_text("def handle(data, context):\n    raise RuntimeError('cannot load: weights missing')\n")
    build_mar(stage, "mirec_bad", "1.0", root / "bad_store", handler=handler)
    return {"root": root, "dir": root / "pkg", "store": root / "pkg" / "model-store", "result": res,
            "bad_store": root / "bad_store"}


def _group(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


def _wait(cond, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---- before anything starts --------------------------------------------------------------------------------------
def test_package_records_sha256_and_start_verifies_it(pkg, tmp_path):
    pj = json.loads((pkg["dir"] / "package.json").read_text())
    for c in pj["candidates"]:
        assert c["sha256"] == mar_sha256(c["mar"]) == c["serving"]["sha256"]
    store = tmp_path / "store"
    shutil.copytree(pkg["store"], store)
    data = (store / "mirec_b.mar").read_bytes()
    (store / "mirec_b.mar").write_bytes(data[: len(data) // 2])  # a truncated download
    models = [ModelServing(**c["serving"]) for c in pj["candidates"]]
    ts = TorchServeProcess(store, models, tmp_path / "ts")
    with pytest.raises(MirecError, match=r"model mirec_b: MAR .*mirec_b\.mar does not match its sha256"):
        ts.start()
    assert ts.proc is None  # nothing was started
    shutil.rmtree(store / "mirec_b.mar", ignore_errors=True)
    (store / "mirec_b.mar").unlink(missing_ok=True)
    with pytest.raises(MirecError, match=r"model mirec_b: MAR .*mirec_b\.mar not found"):
        TorchServeProcess(store, models, tmp_path / "ts2").start()
    folder = tmp_path / "folder_mar"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.bin").write_bytes(b"1")
    h = mar_sha256(folder)
    (folder / "sub" / "x.bin").write_bytes(b"2")
    assert mar_sha256(folder) != h  # no-archive folders are hashed by content too


def test_ports_checked_before_start_naming_the_process(pkg, tmp_path):
    """A port held by another process: a clear error naming the port and that process, and no TorchServe started."""
    holder = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = holder.stdout.readline()  # "Serving HTTP on 127.0.0.1 port NNNN ..."
        port = int(line.split(" port ")[1].split()[0])
        ts = TorchServeProcess(pkg["store"], [], tmp_path / "ts", ports=(free_port(), port, free_port()))
        with pytest.raises(MirecError) as exc:
            ts.start()
        msg = str(exc.value)
        assert f"port {port} (TorchServe management) on 127.0.0.1 is in use by pid {holder.pid}" in msg, msg
        assert "http.server" in msg and "\n" not in msg and ts.proc is None
        # the server that answers must be our own: a listener of another process fails the ownership check
        ts.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            with pytest.raises(MirecError, match=rf"port {port} is answered by pid {holder.pid}"):
                ts.ports = (port, port, ts.ports[2])
                ts.check_ownership()
        finally:
            ts.proc.kill()
            ts.proc.wait()
            ts.proc = None
    finally:
        holder.kill()
        holder.wait()


def test_mirec_serve_port_in_use_is_a_one_line_error(pkg, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-c", CLI, "serve", "--package", str(pkg["dir"]), "--port", str(port),
                               "--ts-port", str(free_port_block(5)), "--workdir", str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and f"port {port} (API) on 127.0.0.1 is in use by pid {os.getpid()}" in err[0], proc.stderr
    assert not (tmp_path / "run" / "torchserve" / "logs" / "ts_log.log").exists()  # TorchServe never started


# ---- tied to the parent: the watchdog and the pid file -------------------------------------------------------------
@pytest.mark.parametrize("how", ["pdeathsig", "poll"])
def test_watchdog_takes_its_group_down_when_the_parent_is_killed(how, tmp_path):
    """tswatch (what TorchServeProcess runs) with a two-level process tree under it, like launcher -> Java ->
    workers: SIGKILL of the parent takes the whole group down, by PR_SET_PDEATHSIG alone (the parent poll off)
    or by the parent poll alone."""
    tree = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "time.sleep(600)")
    flag = ", '--pdeathsig', '--poll-s', '0'" if how == "pdeathsig" else ", '--poll-s', '0.2'"
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'mirec.serving.tswatch', '--parent', str(os.getpid()){flag}, "
        f"'--', sys.executable, '-c', {tree!r}], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pgid = None
    try:
        pgid = int(parent.stdout.readline())
        _wait(lambda: len(_group(pgid)) >= 3, 60, "watchdog + child + grandchild")
        members = _group(pgid)
        parent.kill()
        parent.wait()
        _wait(lambda: not _group(pgid), 60, f"group {pgid} to exit after the parent died")
        assert not [p for p in members if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    finally:
        parent.kill()
        for pid in _group(pgid) if pgid else []:
            os.kill(pid, signal.SIGKILL)


def _dead_process() -> tuple[int, float]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    created = psutil.Process(p.pid).create_time()
    p.wait()
    return p.pid, created


def _pid_file(wd: Path, pgid: int, owner: tuple[int, float]):
    (wd / "mirec-torchserve.pid").write_text(json.dumps({"pid": pgid, "create_time": 0, "owner_pid": owner[0],
                                                         "owner_create_time": owner[1], "ports": []}))


def test_pid_file_orphan_is_stopped_live_owner_refused(tmp_path):
    wd = tmp_path / "ts"
    wd.mkdir()
    ts = TorchServeProcess(tmp_path, [], wd)
    # an orphan: a process group whose processes name the workdir (as Java's -D...=<workdir>/... do), owner dead
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(wd)], start_new_session=True)
    try:
        _pid_file(wd, orphan.pid, _dead_process())
        ts._check_pid_file()
        assert orphan.wait(timeout=30) is not None and not (wd / "mirec-torchserve.pid").exists()
    finally:
        orphan.kill()
    # the same, but its owner still runs: refused, nothing killed
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(wd)], start_new_session=True)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _pid_file(wd, orphan.pid, (owner.pid, psutil.Process(owner.pid).create_time()))
        with pytest.raises(MirecError, match=rf"is in use by a TorchServe \(process group {orphan.pid}\) of a running "
                                             rf"process \(pid {owner.pid}\)"):
            ts._check_pid_file()
        assert orphan.poll() is None
    finally:
        orphan.kill()
        owner.kill()
        orphan.wait()
        owner.wait()
    # stale: the group is gone (or is something else now): the file is just removed
    _pid_file(wd, orphan.pid, _dead_process())
    ts._check_pid_file()
    assert not (wd / "mirec-torchserve.pid").exists()


# ---- fail fast when a model does not load (Java) ----------------------------------------------------------------------
@java
def test_fail_fast_naming_the_mar_when_torchserve_cannot_read_it(pkg, tmp_path):
    """A corrupt MAR with no checksum to catch it: the start fails at once (not after the timeout), naming the model
    and the MAR. Where the cut falls decides how TorchServe fails: no model registered ("Unexpected end of ZLIB input
    stream") or a model whose worker dies loading it (its handler module is in the missing half)."""
    store = tmp_path / "store"
    shutil.copytree(pkg["store"], store)
    data = (store / "mirec_b.mar").read_bytes()
    (store / "mirec_b.mar").write_bytes(data[: len(data) // 2])
    models = [ModelServing(name="mirec_a", mar="mirec_a.mar"), ModelServing(name="mirec_b", mar="mirec_b.mar")]
    ts = TorchServeProcess(store, models, tmp_path / "ts")
    with pytest.raises(MirecError) as exc:
        ts.start(timeout_s=280)
    msg = str(exc.value)
    assert re.search(r"(did not|failed to) load model mirec_b", msg) and "mirec_b.mar" in msg, msg
    assert "not ready after" not in msg, msg
    assert ts.proc is None and not _group_alive(ts)


@java
def test_fail_fast_naming_the_mar_when_a_worker_cannot_load_it(pkg, tmp_path):
    ts = TorchServeProcess(pkg["bad_store"], [ModelServing(name="mirec_bad", mar="mirec_bad.mar")], tmp_path / "ts")
    with pytest.raises(MirecError) as exc:
        ts.start(timeout_s=280)
    msg = str(exc.value)
    assert "failed to load model mirec_bad" in msg and "mirec_bad.mar" in msg and "weights missing" in msg, msg
    assert "not ready after" not in msg and "\n" not in msg


@java
def test_fail_fast_when_the_mar_lacks_its_handler(pkg, tmp_path):
    """A MAR whose handler file is missing: TorchServe registers the model, its worker dies importing the handler
    (before the handler could log anything); the start fails at once with the worker's exception."""
    import zipfile

    store = tmp_path / "store"
    store.mkdir()
    src = pkg["store"] / "mirec_b.mar"
    with zipfile.ZipFile(src) as zin:
        handler = json.loads(zin.read("MAR-INF/MANIFEST.json"))["model"]["handler"]
        with zipfile.ZipFile(store / "mirec_b.mar", "w") as zout:
            for info in zin.infolist():
                if info.filename != handler:
                    zout.writestr(info, zin.read(info))
    ts = TorchServeProcess(store, [ModelServing(name="mirec_b", mar="mirec_b.mar")], tmp_path / "ts")
    with pytest.raises(MirecError) as exc:
        ts.start(timeout_s=280)
    msg = str(exc.value)
    assert "failed to load model mirec_b" in msg and "mirec_b.mar" in msg and "ModuleNotFoundError" in msg, msg
    assert "not ready after" not in msg and ts.proc is None and not _group_alive(ts)


def _group_alive(ts) -> bool:
    return any(psutil.pid_exists(p) for p in ts._procs)


# ---- supervision through `mirec serve` (Java) --------------------------------------------------------------------------
def _serve(pkg, tmp_path):
    api, ts = free_port(), free_port_block(5)
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--package", str(pkg["dir"]), "--port", str(api),
                             "--ts-port", str(ts), "--workdir", str(tmp_path / "run"), "--warmup", "10"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def ready():
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        try:
            return requests.get(f"http://127.0.0.1:{api}/readyz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    _wait(ready, 240, "mirec serve to be ready")
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    return proc, api, tree


@java
def test_mirec_serve_exits_1_when_torchserve_dies(pkg, tmp_path):
    proc, api, tree = _serve(pkg, tmp_path)
    try:
        java_pid = next(p for p in tree if "java" in psutil.Process(p).name())
        os.kill(java_pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
        text = out.decode(errors="replace")
        assert proc.returncode == 1, text[-3000:]
        assert "error: TorchServe exited unexpectedly" in text, text[-3000:]
        _wait(lambda: not [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE],
              60, "every TorchServe process (workers too) to exit")
    finally:
        if proc.poll() is None:
            proc.kill()


@java
def test_killing_mirec_serve_takes_torchserve_down(pkg, tmp_path):
    """kill -9 of `mirec serve`: nothing is left holding the ports (the issue's orphaned TorchServe)."""
    proc, api, tree = _serve(pkg, tmp_path)
    ts_pids = [p for p in tree if "mirec.serving.tswatch" in " ".join(psutil.Process(p).cmdline())
               or "java" in psutil.Process(p).name() or "model_service_worker" in " ".join(psutil.Process(p).cmdline())]
    assert len(ts_pids) >= 4, ts_pids  # watchdog, Java, two workers
    proc.kill()
    proc.wait()
    _wait(lambda: not [p for p in ts_pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE],
          60, "the TorchServe processes of the killed `mirec serve` to exit")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{api}/healthz", timeout=2)
