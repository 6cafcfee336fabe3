#!/bin/sh
# Entrypoint of ghcr.io/mirec-project/mirec-torchserve (Dockerfile, target `torchserve`).
#
# `torchserve ...` always runs in the foreground under this script, with `--foreground` added when missing:
# KServe's TorchServe ServingRuntime passes `torchserve --start --model-store=... --ts-config=...`, made for
# its own image whose entrypoint keeps the container alive with `tail -f /dev/null`; without --foreground
# the launcher returns at once and the container would exit.
# SIGTERM / SIGINT become `torchserve --stop`: the Java frontend and its Python workers shut down cleanly
# (the launcher installs no signal handler, and as PID 1 it would ignore SIGTERM).
# Anything else (`torchserve --stop`, `torchserve --version`, `python ...`, `bash`) is exec'd unchanged.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: mirec-torchserve-entrypoint torchserve [ARGS...] | COMMAND [ARGS...]" >&2
    exit 2
fi
if [ "$1" != "torchserve" ]; then
    exec "$@"
fi

foreground=""
for arg in "$@"; do
    case "$arg" in
        --stop | -v | --version | -h | --help) exec "$@" ;;
        --foreground) foreground=1 ;;
    esac
done
[ -n "$foreground" ] || set -- "$@" --foreground

"$@" &
child=$!
stopping=""
stop() {
    if [ -z "$stopping" ]; then
        stopping=1
        torchserve --stop --foreground || true
    fi
}
trap stop TERM INT

status=0
wait "$child" || status=$?
# `wait` returns early (status > 128) when a trapped signal arrives: wait for torchserve's own exit.
while kill -0 "$child" 2>/dev/null; do
    status=0
    wait "$child" || status=$?
done
exit "$status"
