"""`mirec serve`: the whole local stack on loopback, one command, clean stop.

    TorchServe (both candidates' MARs from `mirec package`, profile `local`) + the recommendation API
    (A/B split over the packaged candidates unless a settings file names the arms).
Before anything starts: the MARs are checked against their sha256 in package.json and every port (the API's and
TorchServe's five) must be free (the error names the port and the process holding it). TorchServe is tied to this
process (`mirec.serving.tswatch`: it goes down when this process dies, even by SIGKILL) and supervised: when it
exits while serving, the API stops and `run_forever` raises `TorchServeDied` (`mirec serve` exits 1 with the
reason). Ctrl-C / SIGTERM stops uvicorn, then TorchServe and every one of its processes.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
import time
from pathlib import Path

from mirec.errors import MirecError
from mirec.serving.ab import Arm, Experiment
from mirec.serving.settings import ApiSettings, load_settings
from mirec.serving.torchserve import TorchServeDied, TorchServeProcess, check_ports_free, free_port
from mirec.serving.tsconfig import ModelServing

log = logging.getLogger(__name__)


def read_package(package_dir: str | Path) -> tuple[Path, list[ModelServing]]:
    p = Path(package_dir) / "package.json"
    if not p.is_file():
        raise MirecError(f"{package_dir} is not a `mirec package` output (no package.json); run `mirec package`")
    pkg = json.loads(p.read_text())
    models = [ModelServing(**c["serving"]) for c in pkg["candidates"]]
    return Path(package_dir) / "model-store", models


def default_settings(models: list[ModelServing], torchserve_url: str, log_path: str | None,
                     salt: str = "exp-1") -> ApiSettings:
    """An even split over the packaged models; the API's deadline = the MARs' client timeout (so TorchServe drops
    what the API gave up on); /docs on (a local, loopback-only stack)."""
    arms = [Arm(name=chr(ord("A") + i), model=m.name, weight=1.0) for i, m in enumerate(models[:26])]
    timeouts = [m.client_timeout_ms for m in models if m.client_timeout_ms]
    extra = {"timeout_ms": max(timeouts)} if timeouts else {}
    return ApiSettings(torchserve_url=torchserve_url, experiment=Experiment(salt=salt, arms=arms), log_path=log_path,
                       docs=True, **extra)


class LocalStack:
    """TorchServe + API in one object; `start()` returns when both answer, `stop()` cleans up."""

    def __init__(self, package_dir: str | Path, settings: ApiSettings | str | Path | None = None,
                 workdir: str | Path | None = None, api_port: int = 8000,
                 ts_ports: tuple[int, int, int] | None = None, log_path: str | None = None,
                 grpc_ports: tuple[int, int] | None = None, warmup_requests: int | None = None):
        """`warmup_requests`: the API's warm-up calls per model (None = the settings' `warmup.requests`)."""
        self.store, self.models = read_package(package_dir)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="mirec-serve-")
        self.workdir = Path(workdir or self._tmp.name)
        self.ts = TorchServeProcess(self.store, self.models, self.workdir / "torchserve", ports=ts_ports,
                                     grpc_ports=grpc_ports)
        if settings is None:
            self.settings = default_settings(self.models, self.ts.inference_url,
                                             log_path or str(self.workdir / "served.jsonl"))
        else:
            s = settings if isinstance(settings, ApiSettings) else load_settings(settings)
            known = {m.name for m in self.models}
            missing = [a.model for a in s.experiment.arms if a.model not in known]
            if missing:
                raise MirecError(f"settings name models that are not packaged: {missing}; packaged: {sorted(known)}")
            upd = {"torchserve_url": self.ts.inference_url}
            if log_path:
                upd["log_path"] = log_path
            self.settings = s.model_copy(update=upd)
        self.settings = self.settings.model_copy(update={"torchserve_management_url": self.ts.management_url})
        if warmup_requests is not None:
            self.settings = self.settings.model_copy(
                update={"warmup": self.settings.warmup.model_copy(update={"requests": warmup_requests})})
        for m in self.models:
            if m.client_timeout_ms and m.client_timeout_ms < self.settings.timeout_ms:
                log.warning("model %s: TorchServe drops requests queued longer than %d ms (client_timeout_ms), the "
                            "API waits %d ms (timeout_ms): such requests get 504 after the full wait; make them equal",
                            m.name, m.client_timeout_ms, self.settings.timeout_ms)
        self.api_port = api_port or free_port()
        self.server = None
        self._thread = None
        self._watch: threading.Thread | None = None
        self._stopping = threading.Event()
        self.died: str | None = None  # why TorchServe is gone, when it died while serving

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_torchserve(self) -> None:
        check_ports_free({"API": self.api_port})  # before TorchServe starts: fail at once, nothing to clean up
        self.ts.start()
        self._stopping.clear()
        self._watch = threading.Thread(target=self._supervise, name="mirec-torchserve-watch", daemon=True)
        self._watch.start()

    def _supervise(self) -> None:
        """TorchServe gone while serving: say why, stop the API (run_forever then raises TorchServeDied)."""
        while not self._stopping.wait(0.5):
            if not self.ts.alive():
                self.died = (f"TorchServe exited unexpectedly (code {self.ts.exit_code()}); its logs are in "
                             f"{self.ts.log_dir}")
                log.error("%s", self.died)
                if self.server is not None:
                    self.server.should_exit = True
                return

    def _make_server(self):
        import uvicorn

        from mirec.serving.api import create_app

        class _Server(uvicorn.Server):
            """uvicorn re-raises SIGINT/SIGTERM after its own shutdown, which would kill this process before
            TorchServe is stopped; here a signal only ends the server loop and `stop()` runs after it."""

            def handle_exit(self, sig, frame):
                self.stop_signal = sig
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                else:
                    self.should_exit = True

        cfg = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.api_port, log_level="warning",
                             access_log=False)
        return _Server(cfg)

    def start(self, timeout_s: float = 120.0) -> "LocalStack":
        """Start both in the background (the API in a thread of this process)."""
        self.start_torchserve()
        try:
            self.server = self._make_server()
            self._thread = threading.Thread(target=self.server.run, daemon=True)
            self._thread.start()
            deadline = time.monotonic() + 30
            while not self.server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise MirecError(f"the API did not start on port {self.api_port}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def run_forever(self) -> None:
        """Foreground: TorchServe in the background, the API in this thread until Ctrl-C / SIGTERM."""
        self.start_torchserve()
        try:
            self.server = self._make_server()
            if self.died is None:
                self.server.run()
        finally:
            self.stop()
        if self.died:
            raise TorchServeDied(self.died)

    def stop(self) -> None:
        self._stopping.set()
        if self.server is not None and self._thread is not None:
            self.server.should_exit = True
            self._thread.join(timeout=10)
        self.server, self._thread = None, None
        self.ts.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
