#!/usr/bin/env bash
# Start a real single-node Slurm cluster on localhost, as root, without systemd:
# munged, MariaDB + slurmdbd (accounting: submitit reads job states with sacct), slurmctld, slurmd.
# Everything it starts records a pid file under $SLURM_CI_DIR/run; .ci/slurm-down.sh stops them.
#
#   SLURM_CI_DIR   state, spool, logs, pid files (default /tmp/slurm-ci)
#   SLURM_CI_CPUS  CPUs the node advertises (default 8: more jobs at once than a 2-core box has cores)
set -euo pipefail

SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/slurm-ci}
SLURM_CI_CPUS=${SLURM_CI_CPUS:-8}
NODE=$(hostname -s)

rm -rf "$SLURM_CI_DIR"/state "$SLURM_CI_DIR"/spool      # old state would resurrect old jobs
mkdir -p "$SLURM_CI_DIR"/{state,spool,log,run}

# Advertising more CPUs than exist needs config_overrides; memory as slurmd detects it.
MEMORY=$(slurmd -C | head -n1 | grep -o 'RealMemory=[0-9]*')

mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SLURM_CI_DIR/state
SlurmdSpoolDir=$SLURM_CI_DIR/spool
SlurmctldPidFile=$SLURM_CI_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_CI_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_CI_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_CI_DIR/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
NodeName=$NODE CPUs=$SLURM_CI_CPUS $MEMORY NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then echo "slurm-up: timeout waiting for $what" >&2; return 1; fi
    sleep 0.1
  done
}

# munged runs as user munge (the key belongs to it); reuse one that is already running
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if ! (munge -n </dev/null | unmunge) >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged sh -c 'munge -n </dev/null | unmunge'
  cp /run/munge/munged.pid "$SLURM_CI_DIR/run/munged.pid"
fi

# MariaDB (unix socket only) + slurmdbd, with a fresh accounting database
if ! mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock >"$SLURM_CI_DIR/log/mariadb.log" 2>&1 &
  echo $! > "$SLURM_CI_DIR/run/mariadbd.pid"
  wait_for 30 mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
fi
mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db'   # job ids restart at 1 with a wiped state/
cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$SLURM_CI_DIR/log/slurmdbd.log
PidFile=$SLURM_CI_DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a file others can read
/usr/sbin/slurmdbd
wait_for 60 slurmdbd sacctmgr -n show cluster

/usr/sbin/slurmctld
/usr/sbin/slurmd
wait_for 60 "node idle" sh -c "[ \"\$(sinfo -h -n $NODE -o %T)\" = idle ]" || {
  tail -n 30 "$SLURM_CI_DIR"/log/slurmctld.log "$SLURM_CI_DIR"/log/slurmd.log >&2; exit 1; }
wait_for 60 "cluster registration" sh -c "sacctmgr -n -P show cluster format=ControlHost | grep -q ."
sinfo
