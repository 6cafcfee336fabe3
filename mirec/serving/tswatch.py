"""Watchdog that ties a TorchServe to the process that started it (`TorchServeProcess` runs it).

    python -m mirec.serving.tswatch --parent PID [--pdeathsig] -- torchserve --start --foreground ...

`TorchServeProcess` starts this module as the leader of a new session (process group); it starts the torchserve
launcher in that group, and the launcher starts Java, which starts the Python workers, all in the same group.
The group is taken down (SIGTERM, then SIGKILL after `GRACE_S`) when
  - this process gets SIGTERM / SIGINT / SIGHUP (`TorchServeProcess.stop()` signals the whole group anyway),
  - the parent dies: Linux delivers SIGTERM through PR_SET_PDEATHSIG (set here with prctl, `--pdeathsig`), and the
    parent pid is also polled every 0.5 s (a reparented process has another parent). The polling covers what
    PDEATHSIG cannot: the kernel sends PDEATHSIG when the *thread* that forked exits, so `TorchServeProcess` asks
    for it only when it starts TorchServe from the main thread;
  - the launcher exits by itself (Java died): leftover workers are killed and this exits with the launcher's code.
Why a watchdog: PDEATHSIG set on the launcher alone would kill only the launcher (it is cleared on fork, so
Java would not inherit it) and leave Java and its workers running as orphans on their ports.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE_S = 15.0


def set_pdeathsig(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent (thread) dies; False where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _group_members(pgid: int) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != os.getpid() and os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def take_down_group(grace_s: float = GRACE_S) -> None:
    """SIGTERM to every other process of this group, wait up to `grace_s`, then SIGKILL the rest."""
    pgid = os.getpgrp()
    members = _group_members(pgid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while members and time.monotonic() < deadline:
        time.sleep(0.1)
        members = _group_members(pgid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mirec.serving.tswatch")
    ap.add_argument("--parent", type=int, required=True, help="pid of the process this TorchServe belongs to")
    ap.add_argument("--pdeathsig", action="store_true", help="also use PR_SET_PDEATHSIG (parent forked from its main thread)")
    ap.add_argument("--poll-s", type=float, default=0.5, help="check the parent pid this often (0: never; tests)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")
    if args.pdeathsig:
        set_pdeathsig(signal.SIGTERM)
    if os.getppid() != args.parent:  # the parent died before prctl took effect
        return 3
    stopping = {"why": None}

    def on_signal(sig, frame):
        stopping["why"] = stopping["why"] or signal.Signals(sig).name

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    child = subprocess.Popen(cmd)
    rc = None
    next_poll = time.monotonic() + args.poll_s if args.poll_s else float("inf")
    while rc is None:
        if stopping["why"] is None and time.monotonic() >= next_poll:
            next_poll = time.monotonic() + args.poll_s
            if os.getppid() != args.parent:
                stopping["why"] = "parent exited"
        if stopping["why"] is not None:
            break
        try:
            rc = child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    if stopping["why"] is not None and stopping["why"] != "SIGTERM":
        print(f"mirec tswatch: {stopping['why']}: stopping TorchServe (process group {os.getpgrp()})",
              file=sys.stderr, flush=True)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # our own killpg below must not re-enter
    take_down_group()
    if rc is None:
        try:
            rc = child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            rc = -9
    return 0 if stopping["why"] is not None else (rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    sys.exit(main())
