#!/usr/bin/env bash
# Emulate a cluster of P hosts joined by 1 Gbit/s Ethernet on this machine (root only).
#
#   scripts/cluster/emulate_cluster.sh up P          P network namespaces gtk-0..gtk-(P-1), each with a veth
#                                            into a bridge that lives in namespace gtk-br; both ends of
#                                            every veth shaped by tbf to $RATE (default 1gbit)
#   scripts/cluster/emulate_cluster.sh run P CMD...  mpiexec -n P CMD..., one rank per namespace, MPI traffic over
#                                            the shaped TCP network (MPICH ofi/tcp, no shared memory)
#   scripts/cluster/emulate_cluster.sh run HxL CMD... H hosts of L ranks each (ranks placed host by host): ranks of
#                                            one host talk through shared memory, hosts through the network
#   scripts/cluster/emulate_cluster.sh down          remove every namespace and kill what runs in them
#
# Addresses: 10.77.0.1 .. 10.77.0.P (private, inside our own namespaces only). Nothing else is touched.
# Facts it relies on: tbf needs gso_max_size 32768 on both veth ends (else it splits 64 KB GSO
# packets and throughput collapses); this kernel has no netem, so no latency is added.
set -euo pipefail
RATE=${RATE:-1gbit}
SUBNET=10.77.0
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$(dirname "$HERE")")

need_root() { [ "$(id -u)" = 0 ] || { echo "emulate_cluster.sh: must run as root" >&2; exit 1; }; }

up() {
  local p=$1
  need_root
  down >/dev/null 2>&1 || true
  ip netns add gtk-br
  ip -n gtk-br link add br0 type bridge
  ip -n gtk-br link set br0 up
  for ((i = 0; i < p; i++)); do
    ip netns add "gtk-$i"
    ip link add "gtkv$i" type veth peer name "gtkb$i"
    ip link set "gtkv$i" netns "gtk-$i"
    ip link set "gtkb$i" netns gtk-br
    ip -n "gtk-$i" link set "gtkv$i" name gtknet
    ip -n "gtk-$i" link set lo up
    ip -n "gtk-$i" addr add "$SUBNET.$((i + 1))/24" dev gtknet
    ip -n "gtk-br" link set "gtkb$i" master br0
    for end in "gtk-$i gtknet" "gtk-br gtkb$i"; do
      set -- $end
      ip -n "$1" link set dev "$2" gso_max_size 32768
      ip -n "$1" link set dev "$2" up
      ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 64kb latency 100ms
    done
  done
  echo "emulated cluster: $p hosts $SUBNET.1-$SUBNET.$p, $RATE per direction per host"
}

down() {
  need_root
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^gtk-' || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  echo "emulated cluster removed"
}

run() {
  local shape=$1 h l
  shift
  need_root
  case "$shape" in
    *x*) h=${shape%x*} l=${shape#*x} ;;
    *) h=$shape l=1 ;;
  esac
  local hosts
  hosts=$(seq -s, -f "$SUBNET.%g" 1 "$h")
  local mpiexec=${GTOPK_MPIEXEC:-$ROOT/.venv/bin/mpiexec}
  # One rank per host: MPIR_CVAR_NOLOCAL=1, never shared memory (the namespaces share a hostname).
  # Several: MPICH finds the ranks of one host from the launcher (one proxy per host) and joins
  # them through shared memory; ranks of different hosts still talk through the network.
  local nolocal=$(( l == 1 ))
  ip netns exec gtk-0 env MPIR_CVAR_NOLOCAL=$nolocal MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp \
    "$mpiexec" -n $((h * l)) -ppn "$l" -hosts "$hosts" -iface gtknet \
    -launcher ssh -launcher-exec "$HERE/netns_ssh.sh" \
    -genv MPIR_CVAR_NOLOCAL $nolocal -genv MPIR_CVAR_CH4_NETMOD ofi -genv FI_PROVIDER tcp "$@"
}

case "${1:-}" in
  up) up "${2:?usage: up P}" ;;
  run) shift; run "${1:?usage: run P|HxL CMD...}" "${@:2}" ;;
  down) down ;;
  *) echo "usage: $0 up P | run P|HxL CMD... | down" >&2; exit 2 ;;
esac
