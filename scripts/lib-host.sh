#!/usr/bin/env bash
# Host-level resources the tests can leave behind: listing (check-leftovers) and removal
# (dev-env down). Sourced after lib.sh.

# Bridges we own: the docker test network's and the quickstart's always; every esbt-* bridge
# unless the host is shared with other runs.
our_bridges() {
  local br
  for br in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    if [[ "$br" == "$DOCKER_NET_BRIDGE" || "$br" == esbt-qs* ]]; then
      echo "$br"
    elif [[ "$SHARED_HOST" != 1 && "$br" == "$TEST_BRIDGE_PREFIX"* ]]; then
      echo "$br"
    fi
  done
}

veths_of() {
  ip -o link show master "$1" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1
}

# Mount points under the dev dir, deepest first.
dev_mounts() {
  findmnt -rn -o TARGET 2>/dev/null | awk -v d="$DEV/" 'index($0, d) == 1' | sort -r
}

# The agent's firewall jumps carry "esb-agent <network>/<ENV> <subnet>" (SPEC §10); rules of
# earlier versions carried "esb-agent <network>: ..." on `-i <bridge>`. Only those of our test
# subnets and bridges are ours: an agent or another dev env on the host keeps its rules.
OUR_BRIDGE_ARG_RE="-i (${TEST_BRIDGE_PREFIX}[^ ]*|${DOCKER_NET_BRIDGE}) "

# iptables-save lines (table-prefixed) that mention our test subnets (CNI rules, the agent's
# jumps) or are the agent's legacy INPUT rule on one of our bridges.
our_iptables_rules() {
  [[ "$SHARED_HOST" == 1 ]] && return 0
  command -v iptables-save >/dev/null || return 0
  local t
  for t in filter nat; do
    iptables-save -t "$t" 2>/dev/null | grep -E '^-A ' |
      grep -E -e "$TEST_SUBNET_RE" -e "^-A INPUT ${OUR_BRIDGE_ARG_RE}.*--comment \"esb-agent " |
      sed "s/^/$t /" || true
  done
}

# The agent's worker firewall chains (ESBI-/ESBF-<hash>) that our jumps target; printed as
# "filter <chain>". Chains of other networks are never listed.
our_agent_chains() {
  [[ "$SHARED_HOST" == 1 ]] && return 0
  command -v iptables-save >/dev/null || return 0
  iptables-save -t filter 2>/dev/null |
    grep -E '^-A (INPUT|FORWARD) .*--comment "esb-agent ' | grep -E -e "$TEST_SUBNET_RE" |
    sed -n -E 's/.* -j (ESB[IF]-[0-9a-f]+)( .*)?$/filter \1/p' | sort -u || true
}

# CNI-* chains with no remaining references whose rules mention our subnets (left by a bridge
# plugin with ipMasq or by portmap/firewall for our networks).
our_cni_chains() {
  [[ "$SHARED_HOST" == 1 ]] && return 0
  command -v iptables-save >/dev/null || return 0
  local t
  for t in filter nat; do
    iptables-save -t "$t" 2>/dev/null | awk -v t="$t" -v re="$TEST_SUBNET_RE" '
      /^:CNI-/ { chain = substr($1, 2); declared[chain] = 1 }
      /^-A CNI-/ { if ($0 ~ re || $0 ~ /esb/) ours[$2] = 1 }
      END { for (c in ours) if (c in declared) print t, c }'
  done
}

# host-local IPAM reservations for our subnets in the system data dir (tests should use
# private dirs, but an agent started with defaults would write here).
our_ipam_files() {
  [[ "$SHARED_HOST" == 1 ]] && return 0
  local f
  for f in /var/lib/cni/networks/*/*; do
    [[ -e "$f" ]] || continue
    if [[ "$(basename "$f")" =~ ^($TEST_SUBNET_RE)$ ]]; then echo "$f"; fi
  done
}

# Named network namespaces in /run/netns belonging to tests (esbt*).
our_run_netns() {
  [[ "$SHARED_HOST" == 1 ]] && return 0
  local n
  for n in /run/netns/esbt*; do
    [[ -e "$n" ]] && echo "$n"
  done
  return 0
}

# Removes everything listed above (best effort, logs what it does).
sweep_host() {
  local br v t rest chain f m chains
  # Chains are recognised by their rules, so list them before the rules go.
  chains="$(our_cni_chains; our_agent_chains)"
  for br in $(our_bridges); do
    for v in $(veths_of "$br"); do
      log "deleting veth $v (on $br)"
      ip link del "$v" 2>/dev/null || true
    done
    log "deleting bridge $br"
    ip link del "$br" 2>/dev/null || true
  done
  while read -r t rest; do
    [[ -n "$t" ]] || continue
    log "deleting iptables rule ($t): $rest"
    # iptables-save output is shell-quoted (comments); eval re-splits it as iptables expects.
    eval "iptables -w -t $t -D ${rest#-A }" 2>/dev/null || true
  done < <(our_iptables_rules)
  while read -r t chain; do
    [[ -n "$t" ]] || continue
    log "deleting iptables chain $t/$chain"
    iptables -w -t "$t" -F "$chain" 2>/dev/null || true
    iptables -w -t "$t" -X "$chain" 2>/dev/null || true
  done <<<"$chains"
  for f in $(our_ipam_files); do
    log "removing IPAM reservation $f"
    rm -f "$f"
  done
  for m in $(our_run_netns); do
    log "removing netns $m"
    umount -l "$m" 2>/dev/null || true
    rm -f "$m"
  done
}

# Unmounts everything under the dev dir (netns pins, overlay rootfs, shm), deepest first.
unmount_dev() {
  local m
  for m in $(dev_mounts); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
}
