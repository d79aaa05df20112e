#!/usr/bin/env bash
# A real Slurm cluster on one machine, for the `fjord launch --slurm` tests (docs/SOVEREIGNTY.md,
# "Slurm"). Debian's Slurm (slurm-wlm 22.05, built with multiple-slurmd support) runs slurmctld and
# four node daemons `slurmd -N nX`, all on 127.0.0.1 with their own ports:
#
#   n1 n2  Features=jurisdiction_NO,site_osl1  Weight=10
#   n3 n4  Features=jurisdiction_SE,site_sto1  Weight=1 (Slurm fills them first: a job lacking the
#                                              right --constraint lands there)
#
# munged runs as the munge user with its own key and socket in STATE, so nothing outside STATE is
# read or written (no /etc/slurm, no /run/munge socket). Slurm commands reach this cluster only
# when SLURM_CONF=STATE/slurm.conf (STATE/env exports it); the tests always set it.
#
#   slurm-cluster.sh up STATE      start everything; exit 0 once all four nodes are idle,
#                                  77 (and STATE/skip-reason) where the daemons cannot start here
#   slurm-cluster.sh status STATE  sinfo and squeue of the cluster
#   slurm-cluster.sh down STATE    cancel its jobs, stop its daemons by PID (idempotent)
#
# STATE may also come from $FJORD_SLURM_STATE. It holds slurm.conf, env, pids/, logs/, spool/,
# tmp/%n (each node's TmpFS: PMIx directories of fake nodes would collide otherwise), munge/,
# jobcomp.log (one line per finished job with its nodes) and ready. Ports: a block of five derived
# from STATE's path (17000-18990), so clusters of two build trees do not collide. Needs root:
# slurmd starts job steps as the submitting user.
set -euo pipefail

die() { echo "slurm-cluster: $*" >&2; exit 1; }

skip() {
  echo "slurm-cluster: $*" | tee "$STATE/skip-reason" >&2
  cmd_down >/dev/null 2>&1 || true
  exit 77
}

# The last lines of the logs that exist, on one line (for skip reasons).
logtail() { local f; for f in "$@"; do [[ -f $f ]] && tail -n 3 "$f"; done | tr '\n' ' '; }

NODES=(n1 n2 n3 n4)
feature_of() { case $1 in n1|n2) echo jurisdiction_NO,site_osl1 ;; *) echo jurisdiction_SE,site_sto1 ;; esac; }
# Slurm allocates lower weights first: SE before NO, so a job without the right --constraint lands
# on SE nodes, and the tests see it.
weight_of() { case $1 in n1|n2) echo 10 ;; *) echo 1 ;; esac; }

# Ends the processes we started (their PIDs in pids/NAME, for each NAME given) together and waits for
# them, KILL after 10 s.
stop_pids() {
  local files=() pids=() f pid
  for f in "$@"; do [[ -f $STATE/pids/$f ]] && files+=("$STATE/pids/$f"); done
  for f in "${files[@]}"; do
    pid=$(cat "$f")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null && pids+=("$pid"); fi
  done
  for _ in $(seq 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "${files[@]}"
}

cmd_down() {
  [[ -d $STATE ]] || return 0
  if [[ -f $STATE/pids/slurmctld && -f $STATE/slurm.conf ]]; then
    # Jobs first, so their steps end through slurmd (scancel talks to this cluster only).
    SLURM_CONF=$STATE/slurm.conf timeout 5 scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
    sleep 0.2
  fi
  stop_pids "${NODES[@]/#/slurmd-}" slurmctld
  stop_pids munged
  rm -f "$STATE/ready"
}

write_conf() {
  local host=$1 base=$2 cpus=$3 mem=$4
  cat >"$STATE/slurm.conf" <<EOF
# Written by scripts/slurm-cluster.sh for fjord's tests; reached through SLURM_CONF only.
ClusterName=fjordtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/logs/slurmctld.log
SlurmdLogFile=$STATE/logs/slurmd-%n.log
TmpFS=$STATE/tmp/%n
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=2
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
EOF
  local i=1 n
  for n in "${NODES[@]}"; do
    echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$((base + i)) CPUs=$cpus RealMemory=$mem" \
         "Weight=$(weight_of "$n") Features=$(feature_of "$n") State=UNKNOWN" >>"$STATE/slurm.conf"
    i=$((i + 1))
  done
  echo "PartitionName=all Nodes=n[1-4] Default=YES MaxTime=INFINITE State=UP" >>"$STATE/slurm.conf"
  # A partition of NO nodes only, as an operator would make for one tenant (inventory slurm.partition).
  echo "PartitionName=acme Nodes=n[1-2] MaxTime=INFINITE State=UP" >>"$STATE/slurm.conf"
}

cmd_up() {
  mkdir -p "$STATE"
  STATE=$(cd "$STATE" && pwd)
  cmd_down
  rm -rf "${STATE:?}"/{skip-reason,spool,run,logs,tmp,munge,pids,jobcomp.log,env}
  [[ $(id -u) -eq 0 ]] || skip "needs root (slurmd starts steps as the submitting user); running as uid $(id -u)"
  local tool
  for tool in munged slurmctld slurmd sinfo sbatch srun scontrol scancel; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (Debian packages slurm-wlm and munge)"
  done
  id munge >/dev/null 2>&1 || skip "there is no munge user (Debian package munge)"
  mkdir -p "$STATE"/{spool/ctld,run,logs,pids}
  local n
  for n in "${NODES[@]}"; do mkdir -p "$STATE/spool/$n" "$STATE/tmp/$n"; done

  # munged: as the munge user, key mode 0400, its own socket directory.
  install -d -o munge -g munge -m 0711 "$STATE/munge"
  head -c 1024 /dev/urandom >"$STATE/munge/munge.key"
  chown munge:munge "$STATE/munge/munge.key"
  chmod 0400 "$STATE/munge/munge.key"
  setsid runuser -u munge -- munged -F --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
    --log-file="$STATE/munge/munged.log" >"$STATE/logs/munged.out" 2>&1 </dev/null &
  echo $! >"$STATE/pids/munged"
  local ok=0
  for _ in $(seq 50); do [[ -S $STATE/munge/munge.socket ]] && { ok=1; break; }; sleep 0.1; done
  [[ $ok -eq 1 ]] || skip "munged did not start: $(logtail "$STATE/logs/munged.out" "$STATE/munge/munged.log")"

  # Ports: five from a base derived from STATE's path.
  local base=$((17000 + 10 * ($(printf '%s' "$STATE" | cksum | cut -d' ' -f1) % 200)))
  local cpus mem
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 8))
  write_conf "$(hostname -s)" "$base" "$cpus" "$mem"
  export SLURM_CONF=$STATE/slurm.conf
  echo "export SLURM_CONF=$STATE/slurm.conf" >"$STATE/env"

  setsid slurmctld -D -i >"$STATE/logs/slurmctld.out" 2>&1 </dev/null &
  echo $! >"$STATE/pids/slurmctld"
  for n in "${NODES[@]}"; do
    setsid slurmd -D -N "$n" >"$STATE/logs/slurmd-$n.out" 2>&1 </dev/null &
    echo $! >"$STATE/pids/slurmd-$n"
  done
  local idle=0
  for _ in $(seq 150); do
    idle=$(timeout 5 sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l || true)
    [[ $idle -eq 4 ]] && break
    for f in "$STATE"/pids/*; do
      kill -0 "$(cat "$f")" 2>/dev/null ||
        skip "$(basename "$f") exited during start-up: $(logtail "$STATE/logs/$(basename "$f").out" "$STATE/logs/$(basename "$f").log")"
    done
    sleep 0.2
  done
  [[ $idle -eq 4 ]] || skip "only $idle of 4 nodes became idle in 30 s: $(timeout 5 sinfo -N 2>&1 | tr '\n' ' ')"
  touch "$STATE/ready"
  echo "slurm-cluster: up in $STATE (SLURM_CONF=$SLURM_CONF)"
}

cmd_status() {
  [[ -f $STATE/slurm.conf ]] || die "no cluster in $STATE (run: $0 up $STATE)"
  export SLURM_CONF=$STATE/slurm.conf
  sinfo -N -o '%N %T %f %P'
  squeue
}

[[ $# -ge 1 ]] || die "usage: $0 up|status|down [STATE] (or FJORD_SLURM_STATE=STATE)"
cmd=$1
STATE=${2:-${FJORD_SLURM_STATE:-}}
[[ -n $STATE ]] || die "give the state directory: $0 $cmd STATE (or set FJORD_SLURM_STATE)"
case $cmd in
  up) cmd_up ;;
  down) cmd_down; rm -rf "${STATE:?}"/{spool,run,tmp,munge,pids} ;;
  status) cmd_status ;;
  *) die "unknown command $cmd: use up, status or down" ;;
esac
