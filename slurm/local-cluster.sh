#!/usr/bin/env bash
# slurm/local-cluster.sh {start|stop|status|env} - a single-node SLURM cluster on this machine,
# for the integration tests and for trying `replicate sweep --executor slurm --cluster local`.
#
# Debian/Ubuntu packages (munge slurmctld slurmd slurm-client), daemons started by hand (no
# systemd needed), everything else self-contained in one state directory:
#
#   $REPLICATE_SLURM_DIR (default /tmp/replicate-slurm)
#     etc/slurm.conf   the cluster's config: clients find it through SLURM_CONF (see `env`);
#                      /etc/slurm is never written
#     munge/           a private munge key, socket, PID file and log (no system munged needed)
#     state/ log/ run/ slurmctld/slurmd state, logs, PID files
#
# start   install missing packages (apt-get), write the config, start munged, slurmctld and
#         slurmd, wait (bounded) until `srun hostname` works. A no-op when already up.
# stop    cancel the cluster's jobs (bounded wait), then stop exactly the daemons this script
#         started: each PID comes from its PID file and is signalled only if /proc/PID/exe is
#         that daemon. Never pkill/killall. A no-op when already down.
# status  print the daemons' PIDs and `sinfo`; exit 0 when the cluster is up, 1 otherwise.
# env     print `export SLURM_CONF=...`; use as  eval "$(slurm/local-cluster.sh env)"
#
# Exit status: 0 ok; 1 failure (the message says which step, with log tails);
#              3 SLURM cannot run here (not root, or packages missing and apt-get unavailable
#                or failing). The test fixture skips on 3 and fails on anything else.
#
# Knobs: REPLICATE_SLURM_DIR, REPLICATE_SLURM_TIMEOUT (seconds per wait step, default 60),
#        REPLICATE_SLURM_PORT (slurmctld port, default 16817; slurmd uses PORT+1; not the standard
#        6817/6818, so that a system SLURM on the same machine is left alone).
set -euo pipefail

DIR=${REPLICATE_SLURM_DIR:-/tmp/replicate-slurm}
TIMEOUT=${REPLICATE_SLURM_TIMEOUT:-60}
CTLD_PORT=${REPLICATE_SLURM_PORT:-16817}
SLURMD_PORT=$((CTLD_PORT + 1))
PARTITION=debug
CLUSTER=replicate-local
PKGS=(munge slurmctld slurmd slurm-client)
CONF=$DIR/etc/slurm.conf
MUNGE=$DIR/munge
SOCKET=$MUNGE/munge.socket
RUN=$DIR/run LOGD=$DIR/log ST=$DIR/state
export SLURM_CONF=$CONF

log() { printf '[local-cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
unavailable() { log "SLURM UNAVAILABLE: $*"; exit 3; }
tail_log() { if [ -f "$1" ]; then echo "---- last lines of $1:" >&2; tail -n 15 "$1" >&2; fi; }

# wait_for SECONDS CMD...: retry CMD every 0.2 s until it succeeds or SECONDS pass
wait_for() {
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.2
  done
}

# pid_of PIDFILE NAME: the PID in PIDFILE if that process is alive and runs NAME's binary
# (Debian installs slurmctld/slurmd as NAME-wlm through alternatives). A stale file whose PID
# was reused by an unrelated process fails this test, so that process is never signalled.
pid_of() {
  local pid exe
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] && alive "$pid" || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  case "${exe##*/}" in "$2" | "$2-wlm") echo "$pid" ;; *) return 1 ;; esac
}
# alive PID: exists and is not a zombie (PID 1 on some containers reaps orphans late)
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }
# stop_daemon PIDFILE NAME: SIGTERM (state is saved), bounded wait, SIGKILL to that PID only
stop_daemon() {
  local pid
  pid=$(pid_of "$1" "$2") || { rm -f "$1"; return 0; }
  log "stopping $2 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  wait_for 30 eval "! alive $pid" && { rm -f "$1"; return 0; }
  log "WARNING: $2 (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait_for 5 eval "! alive $pid" || die "$2 (pid $pid) did not exit"
  rm -f "$1"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
munge_ok() { munge -n -S "$SOCKET" 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { sinfo -h -p "$PARTITION" -o %t 2>/dev/null | head -n1; }
node_ready() { case "$(node_state)" in idle | mix | alloc) return 0 ;; *) return 1 ;; esac; }
smoke() { timeout "$TIMEOUT" srun -p "$PARTITION" -N1 -n1 -t 1 -J local-cluster-smoke hostname; }
is_up() {
  pid_of "$MUNGE/munged.pid" munged >/dev/null && pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null &&
    pid_of "$RUN/slurmd.pid" slurmd >/dev/null && ctld_ok && node_ready
}

install_packages() {
  local missing=() p rc=0 tmp_policy=0
  for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null ||
    unavailable "packages missing (${missing[*]}) and apt-get is not available; install them by hand"
  log "installing ${missing[*]} (apt-get, log in $LOGD/apt.log)"
  # no init system: keep the packages' postinst from starting system daemons we do not track
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && tmp_policy=1
  fi
  { DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends "${missing[@]}"
  } >"$LOGD/apt.log" 2>&1 || rc=$?
  [ "$tmp_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { tail_log "$LOGD/apt.log"; unavailable "apt-get install ${missing[*]} failed (rc=$rc)"; }
}

write_config() {
  local hn hw cpus mem boards sockets cores threads
  hn=$(hostname -s)
  hw=$(/usr/sbin/slurmd -C 2>/dev/null | head -n1) || true
  val() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  cpus=$(val CPUs) mem=$(val RealMemory) boards=$(val Boards)
  sockets=$(val SocketsPerBoard) cores=$(val CoresPerSocket) threads=$(val ThreadsPerCore)
  [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot parse 'slurmd -C': '$hw'"
  # job ids restart at FirstJobId with a fresh state dir; submitit keeps results under
  # <folder>/<jobid>/, so start each fresh state at a time-derived id to avoid reusing old ones
  [ -s "$ST/first_job_id" ] || echo $(($(date +%s) % 50000000 + 1000)) >"$ST/first_job_id"
  cat >"$CONF.new" <<EOF
# written by slurm/local-cluster.sh; clients read it through SLURM_CONF
ClusterName=$CLUSTER
SlurmctldHost=${hn}(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# private munged; a requeued job may start again only after cred_expire s (default 120, min 5)
AuthInfo=socket=$SOCKET,cred_expire=5
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
# the defaults (batch_sched_delay=3, sched_interval=60, bf_interval=30) make test jobs wait
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
# reject impossible requests at submit time instead of pending forever
EnforcePartLimits=ALL
MailProg=/bin/true
ReturnToService=2
FirstJobId=$(cat "$ST/first_job_id")
StateSaveLocation=$ST/slurmctld
SlurmdSpoolDir=$ST/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
# no slurmdbd: sacct does not work, so callers must bound their waits on jobs
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=10
MinJobAge=300
Waittime=0
NodeName=$hn NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$((mem * 95 / 100)) State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if cmp -s "$CONF.new" "$CONF"; then
    rm -f "$CONF.new"
  else
    mv -f "$CONF.new" "$CONF"
    log "wrote $CONF (node $hn: CPUs=$cpus RealMemory=$((mem * 95 / 100)) MB)"
    # daemons of ours still running read the old file: restart them
    stop_daemon "$RUN/slurmd.pid" slurmd
    stop_daemon "$RUN/slurmctld.pid" slurmctld
  fi
}

start_munged() {
  pid_of "$MUNGE/munged.pid" munged >/dev/null && munge_ok && return 0
  install -d -o munge -g munge -m 0755 "$MUNGE"
  if [ ! -s "$MUNGE/munge.key" ]; then
    mungekey --create --keyfile="$MUNGE/munge.key" 2>/dev/null ||
      dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$MUNGE/munge.key" && chmod 0400 "$MUNGE/munge.key"
  fi
  rm -f "$MUNGE/munged.pid" "$SOCKET" "$SOCKET.lock"
  runuser -u munge -- /usr/sbin/munged --key-file="$MUNGE/munge.key" --socket="$SOCKET" \
    --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed" 9>&- ||
    { tail_log "$MUNGE/munged.log"; die "munged failed to start"; }
  wait_for "$TIMEOUT" munge_ok || { tail_log "$MUNGE/munged.log"; die "munged does not answer on $SOCKET"; }
  log "munged started (pid $(cat "$MUNGE/munged.pid"))"
}

# start_slurm_daemon NAME PORT: start NAME unless ours is running; refuse a foreign one on PORT
start_slurm_daemon() {
  pid_of "$RUN/$1.pid" "$1" >/dev/null && return 0
  port_open "$2" && unavailable "port $2 is in use by a process this script did not start; set REPLICATE_SLURM_PORT"
  rm -f "$RUN/$1.pid"
  local args=(-f "$CONF")
  [ "$1" = slurmctld ] && args+=(-i)
  /usr/sbin/"$1" "${args[@]}" 9>&- || { tail_log "$LOGD/$1.log"; die "$1 failed to start"; }
  wait_for "$TIMEOUT" pid_of "$RUN/$1.pid" "$1" || { tail_log "$LOGD/$1.log"; die "$1 wrote no PID file"; }
  log "$1 started (pid $(cat "$RUN/$1.pid"))"
}

start() {
  [ "$(id -u)" = 0 ] || unavailable "must run as root (slurmd and munged need it)"
  mkdir -p "$RUN" "$LOGD" "$DIR/etc" "$ST/slurmctld" "$ST/slurmd"
  install_packages
  write_config
  start_munged
  start_slurm_daemon slurmctld "$CTLD_PORT"
  wait_for "$TIMEOUT" ctld_ok || { tail_log "$LOGD/slurmctld.log"; die "slurmctld does not answer 'scontrol ping'"; }
  start_slurm_daemon slurmd "$SLURMD_PORT"
  local end=$((SECONDS + TIMEOUT)) resumed=0 st
  until node_ready; do
    st=$(node_state)
    case "$st" in
    down* | drain* | drng* | fail*) # e.g. left down by an unclean stop: resume it once
      if [ "$resumed" = 0 ]; then scontrol update NodeName="$(hostname -s)" State=RESUME || true; resumed=1; fi ;;
    esac
    ((SECONDS < end)) || { tail_log "$LOGD/slurmctld.log"; tail_log "$LOGD/slurmd.log"; die "node not ready after ${TIMEOUT}s (state '${st:-?}')"; }
    sleep 0.2
  done
  local out
  out=$(smoke 2>&1) || { tail_log "$LOGD/slurmd.log"; die "'srun hostname' failed: $out"; }
  log "cluster up: partition $PARTITION, srun hostname -> $out; use: export SLURM_CONF=$CONF"
}

stop() {
  if pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null && ctld_ok; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      scancel $jobs 2>/dev/null || true
      wait_for 30 eval '[ -z "$(squeue -h -o %i 2>/dev/null)" ]' || log "WARNING: jobs still listed: $(squeue -h -o '%i %T' | tr '\n' ' ')"
    fi
  fi
  stop_daemon "$RUN/slurmd.pid" slurmd
  stop_daemon "$RUN/slurmctld.pid" slurmctld
  stop_daemon "$MUNGE/munged.pid" munged
  log "cluster down (state kept in $DIR)"
}

status() {
  local d f rc=0 pid
  for d in munged slurmctld slurmd; do
    f=$RUN/$d.pid
    [ "$d" = munged ] && f=$MUNGE/munged.pid
    if pid=$(pid_of "$f" "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; rc=1; fi
  done
  if [ "$rc" = 0 ] && ctld_ok; then
    sinfo
    node_ready || rc=1
  else
    rc=1
  fi
  echo "SLURM_CONF=$CONF"
  return $rc
}

# one start/stop at a time (several test sessions may share the default state dir); the daemons
# are started with fd 9 closed so that they do not keep holding the lock
locked() {
  mkdir -p "$DIR"
  exec 9>"$DIR/lock"
  flock -w "$((TIMEOUT * 3))" 9 || die "could not lock $DIR/lock within $((TIMEOUT * 3)) s"
  "$@"
}

case "${1:-}" in
start) locked start ;;
stop) locked stop ;;
status) status ;;
env) echo "export SLURM_CONF=$CONF" ;;
*) echo "usage: $0 {start|stop|status|env}" >&2; exit 2 ;;
esac
