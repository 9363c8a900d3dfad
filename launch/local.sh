#!/usr/bin/env bash
# Multi-process flaxft on this machine: NUM_PROCESSES processes, each with
# DEVICES_PER_PROCESS simulated CPU devices, joined by jax.distributed over gloo.
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS -- <flaxft.main arguments>
#   launch/local.sh 2 4 -- --config configs/pretrain_tiny.py --workdir runs/mp
#
# Process 0's output streams here; the others log to $FLAXFT_LOG_DIR (default: a new
# temporary folder, printed, and removed again when every process succeeded). If any
# process fails, the rest are stopped and its exit code is returned. $PYTHON picks the
# interpreter (default: the project's .venv/bin/python if there is one, else python3).
set -euo pipefail

usage="usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- <flaxft.main arguments>"
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  echo "$usage"
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
if [ $# -lt 3 ] || [ "$3" != "--" ]; then
  echo "$usage" >&2
  exit 2
fi
num_processes=$1 devices=$2
shift 3
venv_python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
if [ -n "${PYTHON:-}" ]; then python=$PYTHON; elif [ -x "$venv_python" ]; then python=$venv_python; else python=python3; fi
temporary_logs=0
if [ -z "${FLAXFT_LOG_DIR:-}" ]; then temporary_logs=1; fi
log_dir=${FLAXFT_LOG_DIR:-$(mktemp -d -t flaxft-local-XXXXXX)}
mkdir -p "$log_dir"
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "launching $num_processes processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir" >&2

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for ((i = 0; i < num_processes; i++)); do
  run=(env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices"
       "$python" -m flaxft.main --coordinator_address="127.0.0.1:$port"
       --num_processes="$num_processes" --process_id="$i" "$@")
  if [ "$i" -eq 0 ]; then
    "${run[@]}" &
  else
    "${run[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

status=0
for ((left = num_processes; left > 0; left--)); do
  finished=""
  wait -n -p finished || status=$?
  if [ "$status" -ne 0 ]; then
    echo "process with pid $finished failed with exit code $status; stopping the others (logs in $log_dir)" >&2
    break
  fi
done
if [ "$status" -eq 0 ] && [ "$temporary_logs" -eq 1 ]; then rm -rf "$log_dir"; fi
exit "$status"
