#!/usr/bin/env bash
# Shared helpers for the esb-agent scripts (sourced, not run).
# shellcheck disable=SC2034 # the variables here are used by the scripts that source this file
# Paths: REPO (the checkout), DEV (private daemons' home, override with ESB_DEV_DIR).

REPO="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
DEV="${ESB_DEV_DIR:-$REPO/.dev}"
export REPO DEV

# Coordinates of the private environment (docs/testing.md). The defaults are what every test
# and helper expects; the overrides only exist to run a second, throwaway environment side by side.
REG_HTTP_ADDR="127.0.0.1:${ESB_DEV_REGISTRY_PORT:-35000}"
REG_TLS_ADDR="127.0.0.1:${ESB_DEV_REGISTRY_TLS_PORT:-35443}"
DOCKER_NET="${ESB_DEV_DOCKER_NETWORK:-esb-test-net}"
DOCKER_NET_SUBNET="${ESB_DEV_DOCKER_SUBNET:-172.31.250.0/24}"
DOCKER_NET_BRIDGE="${ESB_DEV_DOCKER_BRIDGE:-esbt-docker0}"
# Host-global names that tests use: bridges esbt-*, CNI subnets 10.199.*.
TEST_BRIDGE_PREFIX="esbt-"
TEST_SUBNET_RE='10\.199\.[0-9]+\.[0-9]+|172\.31\.250\.[0-9]+'
# ESB_DEV_SHARED_HOST=1: other runs share this host, so leave host-global test names
# (esbt-* bridges, CNI chains, /var/lib/cni IPAM files) alone and only treat what is ours.
SHARED_HOST="${ESB_DEV_SHARED_HOST:-0}"
export DOCKER_CLI_HINTS=false
CTR=(ctr --address "$DEV/containerd/containerd.sock")
DOCKER=(docker --host "unix://$DEV/docker/docker.sock")
WORKER_REPO="esb/test-worker"
WORKER_TAG="latest"

# The one package list (Debian): what the build, the private daemons and the checks need.
# scripts/dev-env installs it when something is missing; .ci/run installs it on a fresh machine.
APT_PACKAGES=(containerd runc containernetworking-plugins iptables nftables docker.io docker-registry
  skopeo umoci protobuf-compiler openssl iproute2 util-linux curl ca-certificates gcc libc6-dev
  pkg-config git binutils systemd shellcheck)

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive FILE: true when FILE names a running process of ours (its command line mentions
# the dev dir or the repo, so a recycled PID is never taken for ours).
pid_alive() {
  local f="$1" pid cmd
  [[ -s "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$cmd" == *"$DEV"* || "$cmd" == *"$REPO"* ]]
}

# wait_for SECONDS DESCRIPTION CMD...: polls CMD until it succeeds, or fails after SECONDS.
wait_for() {
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# stop_pidfile FILE [GRACE]: SIGTERM the process named in FILE, bounded wait, then SIGKILL.
stop_pidfile() {
  local f="$1" grace="${2:-15}" pid i
  if pid_alive "$f"; then
    pid="$(cat "$f")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ($f) did not stop in ${grace}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$f"
}
