#!/usr/bin/env bash
# A real two-node Slurm (munge, slurmctld, two slurmd) on this machine, for handyjobs' Slurm tests.
#
#   scripts/slurm-local.sh start    install (apt-get, as root) if needed, write slurm.conf, start
#                                   the daemons, wait for the node; prints SLURM_CONF=...
#   scripts/slurm-local.sh status   exit 0 when the local cluster answers (prints SLURM_CONF=...)
#   scripts/slurm-local.sh stop     cancel its jobs, stop the daemons it started, remove its folder
#   scripts/slurm-local.sh ctld-stop   stop only the controller (slurmctld): a cluster that does
#                                   not answer, its jobs left running on the node
#   scripts/slurm-local.sh ctld-start  start the controller again (it reloads its saved state)
#
# Everything lives in one folder (HANDYJOBS_SLURM_DIR, default /tmp/handyjobs-slurm): the munge
# key and socket, slurm.conf, state and spool folders, pid files and logs. Nothing is written to
# /etc, and the daemons listen on their own ports (HANDYJOBS_SLURM_PORT and the next one, default
# 16817), so a Slurm already installed on the machine is left alone. Clients find this cluster
# through SLURM_CONF. The settings that make it work in a container: proctrack/linuxproc (no
# cgroups), task/none, select/cons_tres, no accounting database.
#
# The two nodes, n1 and n2, are two slurmd on this host (slurmd -N NAME, each on its own port).
# Their names resolve nowhere: whatever must reach a node uses its NodeAddr (127.0.0.1), as on
# a site whose node names are not in DNS. Each node says it has all of this machine's CPUs and
# two GPUs that Slurm only counts.
#
# Exit codes: 0 ok; 1 the daemons did not come up (their logs are named); 2 cannot run here
# (not root, no apt-get to install Slurm).
set -euo pipefail

DIR="${HANDYJOBS_SLURM_DIR:-/tmp/handyjobs-slurm}"
PORT="${HANDYJOBS_SLURM_PORT:-16817}"
CONF="$DIR/slurm.conf"
SOCK="$DIR/munge-run/munge.socket"

say() { echo "slurm-local: $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        say "needs root (slurmd starts jobs as their users); run it with sudo"
        exit 2
    fi
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    if ! command -v apt-get >/dev/null; then
        say "Slurm is not installed and there is no apt-get; install slurm-wlm and munge"
        exit 2
    fi
    say "installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
}

alive() {  # is the process named in pid file $1 still running?
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

NODES="n1 n2"

running() {
    alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd-n1.pid" && alive "$DIR/slurmd-n2.pid" \
        && SLURM_CONF="$CONF" timeout 10 sinfo -h >/dev/null 2>&1
}

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    # Leave some memory to the machine; Slurm refuses a node that reports less than configured.
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
    cat >"$CONF" <<EOF
# Written by handyjobs' scripts/slurm-local.sh: a two-node cluster for tests.
ClusterName=handyjobs-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again once its credentials expire (120 s by default); 10 s here.
AuthInfo=socket=$SOCK,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Look at the queue every few seconds, so a job whose begin time passed starts promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
KillWait=10
# Two GPUs that Slurm only counts (its gres.conf names two harmless character devices, as
# Slurm wants one per GPU): GPU jobs are allocated, with their share of the node's CPUs
# (SLURM_CPUS_PER_TASK); nothing runs on a GPU here.
GresTypes=gpu
NodeName=n1 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((PORT + 2)) CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((PORT + 3)) CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/gres.conf" <<EOF
NodeName=n[1-2] Name=gpu File=/dev/null
NodeName=n[1-2] Name=gpu File=/dev/zero
EOF
}

start() {
    need_root
    if running; then
        echo "SLURM_CONF=$CONF"
        return
    fi
    install
    stop_daemons
    rm -rf "$DIR"
    mkdir -p "$DIR"/{state,spool/n1,spool/n2,log,munge-key,munge-run}
    chmod 700 "$DIR/munge-key"
    chmod 755 "$DIR" "$DIR/munge-run"  # users' clients reach munge's socket through it
    dd if=/dev/urandom of="$DIR/munge-key/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge-key/munge.key"
    # --force: munged dislikes a socket folder under /tmp; this one is ours and 0755.
    munged --force --key-file="$DIR/munge-key/munge.key" --socket="$SOCK" \
        --pid-file="$DIR/munge-run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge-key/munged.seed"
    write_conf
    export SLURM_CONF="$CONF"
    slurmctld -f "$CONF"
    local node ready state
    for node in $NODES; do
        slurmd -f "$CONF" -N "$node"
    done
    for _ in $(seq 1 60); do
        ready=0
        for node in $NODES; do
            state="$(sinfo -h -n "$node" -o %T 2>/dev/null || true)"
            case "$state" in
                idle*|mixed*|allocated*) ready=$((ready + 1)) ;;
                down*|drain*)
                    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
            esac
        done
        if [ "$ready" = 2 ]; then
            echo "SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    say "the nodes did not become ready ($(sinfo -h -N -o '%N %T' 2>/dev/null | tr '\n' ' ')); see $DIR/log/"
    exit 1
}

stop_daemons() {
    if [ -f "$CONF" ] && alive "$DIR/slurmctld.pid"; then
        SLURM_CONF="$CONF" scancel --full --signal=KILL --user="$(id -un)" 2>/dev/null || true
    fi
    for pidfile in "$DIR/slurmd-n1.pid" "$DIR/slurmd-n2.pid" "$DIR/slurmctld.pid" \
        "$DIR/munge-run/munged.pid"; do
        if alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

ctld_stop() {
    if alive "$DIR/slurmctld.pid"; then
        pid="$(cat "$DIR/slurmctld.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

ctld_start() {
    if ! alive "$DIR/slurmctld.pid"; then
        slurmctld -f "$CONF"
    fi
    for _ in $(seq 1 100); do
        if SLURM_CONF="$CONF" timeout 5 squeue -h >/dev/null 2>&1; then
            echo "SLURM_CONF=$CONF"
            return
        fi
        sleep 0.2
    done
    say "slurmctld did not answer again; see $DIR/log/slurmctld.log"
    exit 1
}

case "${1:-}" in
    start) start ;;
    ctld-stop) need_root; ctld_stop ;;
    ctld-start) need_root; ctld_start ;;
    status)
        if running; then echo "SLURM_CONF=$CONF"; else say "not running"; exit 1; fi ;;
    stop)
        need_root
        stop_daemons
        rm -rf "$DIR" ;;
    *)
        echo "usage: $0 start|status|stop|ctld-stop|ctld-start" >&2
        exit 2 ;;
esac
