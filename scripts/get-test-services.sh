#!/usr/bin/env bash
# Install the local services some tests run against, each started and stopped by the tests themselves on a free
# loopback port: Debian's redis-server (tests/test_features_redis.py) and Debian's postgresql
# (tests/test_features_postgres.py: the shared Feast SQL registry; tests/servers.py runs it as the `postgres` user).
#
#   bash scripts/get-test-services.sh
#
# Idempotent: nothing happens when redis-server and PostgreSQL's initdb are already there.
# Installs only with apt-get, as root or with non-interactive sudo. Never starts a daemon: a
# policy-rc.d that denies service starts is put in place for the install (unless one exists already),
# and if a redis-server service is running afterwards anyway it is stopped and disabled.
# Never fails the caller: it always exits 0 and says on stderr what it did or why it could not;
# the tests then skip with a reason. Needs only the Debian package mirror (no other network).
# Measured (Debian 12, 2 shared cores under load, package lists already present): 19 s for
# redis-server + redis-tools + libs, 14 s for redis-server alone; 0.03 s when already installed.
set -u

log() { echo "[get-test-services] $*" >&2; }

have_pg() { command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
PACKAGES=""
command -v redis-server >/dev/null 2>&1 || PACKAGES="$PACKAGES redis-server"
have_pg || PACKAGES="$PACKAGES postgresql"
if [ -z "$PACKAGES" ]; then
  log "redis-server and postgresql already installed: $(redis-server --version 2>/dev/null | head -n1)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  log "missing:$PACKAGES and apt-get is not available: their tests will be skipped"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    log "missing:$PACKAGES and not root (no non-interactive sudo): their tests will be skipped"
    exit 0
  fi
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
POLICY=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$POLICY" ]; then
  # forbid invoke-rc.d from starting the service during the install (Debian's documented mechanism)
  if printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null 2>&1 && $SUDO chmod 0755 "$POLICY"; then
    made_policy=1
  fi
fi
cleanup() { if [ "$made_policy" = 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

apt_log="$(mktemp)"
LIMIT=""  # never hang the caller on a stuck mirror or dpkg lock
command -v timeout >/dev/null 2>&1 && LIMIT="timeout ${MIREC_APT_TIMEOUT:-300}"
install() {
  # shellcheck disable=SC2086  # PACKAGES is a word list
  $SUDO $LIMIT apt-get install -y -q --no-install-recommends $PACKAGES >>"$apt_log" 2>&1
}
log "installing Debian's$PACKAGES with apt-get (log: $apt_log)"
if ! install; then
  log "first attempt failed; running apt-get update once and retrying"
  $SUDO $LIMIT apt-get update -q >>"$apt_log" 2>&1 || true
  if ! install; then
    log "could not install$PACKAGES (their tests will be skipped); last lines of $apt_log:"
    tail -n 10 "$apt_log" >&2
    exit 0
  fi
fi

# the packages may have started a system-wide service (no policy-rc.d, systemd host): stop and disable them
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/postgresql ]; then
  $SUDO /etc/init.d/postgresql stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null 2>&1 && $SUDO update-rc.d postgresql disable >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/redis-server ]; then
  $SUDO /etc/init.d/redis-server stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null 2>&1 && $SUDO update-rc.d redis-server disable >/dev/null 2>&1 || true
fi
if [ -f /run/redis/redis-server.pid ]; then
  pid="$(cat /run/redis/redis-server.pid 2>/dev/null)"
  [ -n "$pid" ] && $SUDO kill "$pid" 2>/dev/null || true
fi

if command -v redis-server >/dev/null 2>&1 && have_pg; then
  log "installed$PACKAGES in $(( $(date +%s) - start )) s (no service running)"
  rm -f "$apt_log"
else
  log "apt-get reported success but redis-server or PostgreSQL's initdb is missing; see $apt_log"
fi
exit 0
