#!/usr/bin/env bash
# A multi-host test cluster on one machine, for the tenancy tests (docs/SOVEREIGNTY.md).
#
# Each host is a Linux network namespace with its own veth ("eth0", 10.213.0.X/24) on a bridge
# (fjordbr0) that lives in a namespace of its own. Nothing connects that bridge to the machine's
# network: no interface in the root namespace, no default route, no forwarding, so test traffic can
# reach only the hosts made here. Commands run on a host see its name from `hostname` (a UTS
# namespace per command, via unshare --uts) and its own node identity file (FJORD_NODE_IDENTITY,
# which the audit log records as a test override; fjord refuses it unless the machine's node settings
# enable test overrides: scripts/test-overrides.sh, docs/SOVEREIGNTY.md "Test overrides"). A "head" host (10.213.0.2, no identity) is
# where `fjord launch` and mpirun run; mpirun reaches the other hosts through an rsh agent that runs
# `ip netns exec HOST ...` instead of ssh.
#
#   netns-cluster.sh check                      exit 0 if namespaces can be made here, else 77 + why
#   netns-cluster.sh up STATE [NAME:CC:SITE...] make the hosts (default no1 no2 in NO, se1 se2 in SE)
#   netns-cluster.sh exec STATE HOST CMD...     run CMD on HOST ("head" or a host name)
#   netns-cluster.sh isolate STATE HOST         cut HOST off: its port on the bridge goes down (a partition)
#   netns-cluster.sh reconnect STATE HOST       put HOST back on the bridge
#   netns-cluster.sh blackhole STATE HOST SECS  drop all of HOST's traffic for SECS seconds (fractions allowed):
#                                               its bridge port stops forwarding, its link stays up
#   netns-cluster.sh down STATE                 remove everything `up` made (idempotent)
#
# STATE is a directory this script owns: hosts (name address jurisdiction site), per-host identity
# files, the rsh agent, inventory.textproto (the cluster as an operator would declare it, with its
# node lease directory STATE/leases) and env
# (the Open MPI settings mpirun needs here). `up` removes what it made if it fails half-way. Needs
# root (CAP_NET_ADMIN, CAP_SYS_ADMIN); `check` says so plainly where they are missing.
set -euo pipefail

die() { echo "netns-cluster: $*" >&2; exit 1; }

cmd_check() {
  if [[ $(id -u) -ne 0 ]]; then echo "netns-cluster: needs root (ip netns, unshare --uts); running as uid $(id -u)" >&2; exit 77; fi
  for tool in ip unshare; do
    command -v "$tool" >/dev/null || { echo "netns-cluster: $tool is not installed (iproute2 / util-linux)" >&2; exit 77; }
  done
  local probe="fjprobe-$$"
  if ! ip netns add "$probe" 2>/tmp/fjord-netns-probe.$$; then
    echo "netns-cluster: cannot create a network namespace here: $(cat /tmp/fjord-netns-probe.$$)" >&2
    rm -f /tmp/fjord-netns-probe.$$
    exit 77
  fi
  local ok=1
  ip -n "$probe" link add probe0 type bridge 2>/dev/null || ok=0
  ip netns exec "$probe" unshare --uts true 2>/dev/null || ok=0
  ip netns del "$probe"
  rm -f /tmp/fjord-netns-probe.$$
  if [[ $ok -ne 1 ]]; then echo "netns-cluster: namespaces work but bridges or UTS namespaces do not" >&2; exit 77; fi
}

# Namespace names: a prefix unique to this STATE, so clusters of parallel runs never collide.
prefix_of() { echo "fj$(printf '%s' "$(cd "$1" && pwd)" | sha256sum | cut -c1-6)"; }

cmd_down() {
  local state=$1
  [[ -d $state ]] || return 0
  local prefix
  prefix=$(prefix_of "$state")
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${prefix}-" || true); do
    # Processes still inside our namespaces were started by this harness: end them by pid.
    local pid
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "${state:?}/hosts" "$state/agent" "$state/exec-host" "$state/env" "$state/inventory.textproto" \
    "$state/ready" "$state/prefix" "$state/skip-reason" "$state/leases"
}

cmd_up() {
  local state=$1
  shift
  local specs=("$@")
  [[ ${#specs[@]} -gt 0 ]] || specs=(no1:NO:osl1 no2:NO:osl1 se1:SE:sto1 se2:SE:sto1)
  mkdir -p "$state"
  state=$(cd "$state" && pwd)
  cmd_down "$state"
  if ! (cmd_check) 2>"$state/skip-reason"; then
    cat "$state/skip-reason" >&2
    exit 77
  fi
  rm -f "$state/skip-reason"
  local prefix
  prefix=$(prefix_of "$state")
  trap 'status=$?; if [[ $status -ne 0 ]]; then echo "netns-cluster: up failed; removing what was made" >&2; cmd_down "'"$state"'"; fi' EXIT
  echo "$prefix" >"$state/prefix"
  local sw="${prefix}-sw"
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add fjordbr0 type bridge
  ip -n "$sw" link set fjordbr0 up

  mkdir -p "$state/hosts"
  : >"$state/hosts/table"
  local i=0
  add_host() {  # name address jurisdiction site
    local name=$1 addr=$2 jur=$3 site=$4
    local ns="${prefix}-${name}"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add eth0 netns "$ns" type veth peer name "p-${name}" netns "$sw"
    ip -n "$sw" link set "p-${name}" master fjordbr0
    ip -n "$sw" link set "p-${name}" up
    ip -n "$ns" addr add "${addr}/24" dev eth0
    ip -n "$ns" link set eth0 up
    mkdir -p "$state/hosts/$name"
    if [[ -n $jur ]]; then
      cat >"$state/hosts/$name/node.textproto" <<EOF
# Node identity of test host $name (netns-cluster.sh); production nodes have /etc/fjord/node.textproto.
hostname: "$name"
jurisdiction: "$jur"
site: "$site"
provisioned_by: "scripts/netns-cluster.sh"
EOF
    fi
    echo "$name $addr ${jur:--} ${site:--}" >>"$state/hosts/table"
  }
  add_host head 10.213.0.2 "" ""
  for spec in "${specs[@]}"; do
    IFS=: read -r name jur site <<<"$spec"
    [[ -n $name && -n $jur && -n $site ]] || die "host spec '$spec' is not NAME:JURISDICTION:SITE"
    add_host "$name" "10.213.0.$((11 + i))" "$jur" "$site"
    i=$((i + 1))
  done

  # The rsh agent mpirun uses instead of ssh: AGENT HOST COMMAND... (HOST: name or address).
  cat >"$state/agent" <<EOF
#!/usr/bin/env bash
# plm_rsh_agent for the netns test cluster in $state: runs the command on HOST like ssh would.
set -euo pipefail
host=\$1; shift
name=\$(awk -v h="\$host" '\$1 == h || \$2 == h {print \$1; exit}' "$state/hosts/table")
[[ -n \$name ]] || { echo "netns agent: unknown host \$host" >&2; exit 255; }
exec "$state/exec-host" "\$name" sh -c "\$*"
EOF
  cat >"$state/exec-host" <<EOF
#!/usr/bin/env bash
# Runs COMMAND... on test host NAME: its network namespace, its hostname, its node identity.
set -euo pipefail
name=\$1; shift
if [[ -f "$state/hosts/\$name/node.textproto" ]]; then
  export FJORD_NODE_IDENTITY="$state/hosts/\$name/node.textproto"
else
  unset FJORD_NODE_IDENTITY
fi
exec ip netns exec "${prefix}-\$name" unshare --uts sh -c 'hostname "\$0" && exec "\$@"' "\$name" "\$@"
EOF
  chmod 755 "$state/agent" "$state/exec-host"

  # What mpirun on the head needs: the agent, no tree spawn (every daemon starts from the head),
  # no binding (hosts share the machine's cores), TCP on the bridge only, and root allowed.
  cat >"$state/env" <<EOF
export OMPI_MCA_plm_rsh_agent=$state/agent
export OMPI_MCA_plm_rsh_no_tree_spawn=1
export OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_btl=self,tcp
export OMPI_MCA_btl_tcp_if_include=10.213.0.0/24
export OMPI_MCA_oob_tcp_if_include=10.213.0.0/24
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
EOF

  # The cluster as an operator declares it.
  {
    echo "# Inventory of the netns test cluster in $state (scripts/netns-cluster.sh)."
    echo "interface: \"eth0\""
    echo "lease_dir: \"$state/leases\"  # node leases of fjord launch (launcher/lease.h)"
    while read -r name addr jur site; do
      [[ $name == head ]] && continue
      echo "node { hostname: \"$name\" address: \"$addr\" jurisdiction: \"$jur\" site: \"$site\" slots: 1 }"
    done <"$state/hosts/table"
  } >"$state/inventory.textproto"
  mkdir -p "$state/leases"
  touch "$state/ready"
  trap - EXIT
  echo "netns-cluster: up in $state ($(grep -vc '^head ' "$state/hosts/table") hosts + head, prefix $prefix)"
}

cmd_exec() {
  local state=$1 host=$2
  shift 2
  state=$(cd "$state" && pwd)
  [[ -f $state/ready ]] || die "no cluster in $state: run '$0 up $state' first"
  grep -q "^$host " "$state/hosts/table" || die "no host $host in $state (hosts: $(awk '{print $1}' "$state/hosts/table" | xargs))"
  if [[ $host == head ]]; then
    # shellcheck disable=SC1091
    source "$state/env"
  fi
  exec "$state/exec-host" "$host" "$@"
}

# The port of HOST on the bridge, in the switch namespace: down, nothing reaches HOST or leaves it
# (its eth0 loses carrier; sockets stay open and TCP retransmits into the void, as on a cut cable).
cmd_link() {
  local state=$1 host=$2 updown=$3
  state=$(cd "$state" && pwd)
  [[ -f $state/ready ]] || die "no cluster in $state: run '$0 up $state' first"
  [[ $host != head ]] || die "the head runs mpirun and cannot be cut off"
  grep -q "^$host " "$state/hosts/table" || die "no host $host in $state"
  case $updown in
    up | down) ip -n "$(prefix_of "$state")-sw" link set "p-$host" "$updown" ;;
    # A black hole: the bridge port of HOST disabled (state 0) drops every frame in both directions
    # while both ends keep their carrier, so no kernel sees a local error (as with a fault further
    # away in the network); forwarding (state 3) again afterwards.
    drop) bridge -n "$(prefix_of "$state")-sw" link set dev "p-$host" state 0 ;;
    pass) bridge -n "$(prefix_of "$state")-sw" link set dev "p-$host" state 3 ;;
  esac
}

case ${1:-} in
  check) cmd_check ;;
  up) [[ $# -ge 2 ]] || die "usage: $0 up STATE [NAME:CC:SITE...]"; shift; cmd_up "$@" ;;
  down) [[ $# -eq 2 ]] || die "usage: $0 down STATE"; cmd_down "$2"; rmdir "$2" 2>/dev/null || true; echo "netns-cluster: down" ;;
  exec) [[ $# -ge 4 ]] || die "usage: $0 exec STATE HOST CMD..."; shift; cmd_exec "$@" ;;
  isolate) [[ $# -eq 3 ]] || die "usage: $0 isolate STATE HOST"; cmd_link "$2" "$3" down ;;
  reconnect) [[ $# -eq 3 ]] || die "usage: $0 reconnect STATE HOST"; cmd_link "$2" "$3" up ;;
  blackhole)
    [[ $# -eq 4 && $4 =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "usage: $0 blackhole STATE HOST SECONDS"
    cmd_link "$2" "$3" drop
    trap 'cmd_link "$2" "$3" pass' EXIT  # forwarding again even if interrupted
    sleep "$4"
    ;;
  *) die "usage: $0 check | up STATE [NAME:CC:SITE...] | exec STATE HOST CMD... | isolate|reconnect STATE HOST | blackhole STATE HOST SECONDS | down STATE" ;;
esac
