#!/usr/bin/env bash
# ssh stand-in for MPICH's launcher inside the emulated cluster (see emulate_cluster.sh):
# called as `netns_ssh.sh [ssh options] 10.77.0.N command...`, runs the command in namespace gtk-(N-1).
set -euo pipefail
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
host=$1
shift
idx=$(( ${host##*.} - 1 ))
exec ip netns exec "gtk-$idx" sh -c "$*"
