#!/usr/bin/env bash
# Stop what .ci/slurm-up.sh started, by pid file, in reverse order (a zombie counts as stopped).
SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/slurm-ci}

stop_pidfile() {
  local file=$1 pid i
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
  for i in $(seq 300); do   # up to 30 s
    kill -0 "$pid" 2>/dev/null || break
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
    echo "slurm-down: pid $pid ($file) did not stop; sending SIGKILL" >&2
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$file"
}

# Cancel leftover jobs first: their slurmstepd processes outlive slurmd.
if [ -s "$SLURM_CI_DIR/run/slurmctld.pid" ] && squeue -h >/dev/null 2>&1; then
  scancel --partition=debug 2>/dev/null
  for i in $(seq 300); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
fi
stop_pidfile "$SLURM_CI_DIR/run/slurmd.pid"
stop_pidfile "$SLURM_CI_DIR/run/slurmctld.pid"
stop_pidfile "$SLURM_CI_DIR/run/slurmdbd.pid"
stop_pidfile "$SLURM_CI_DIR/run/mariadbd.pid"   # only when slurm-up.sh started it
stop_pidfile "$SLURM_CI_DIR/run/munged.pid"     # likewise
exit 0
