#!/usr/bin/env bash
# Dry run of a launch, on this machine, before renting accelerators (docs/launch.md, "Dry run").
#
#   scripts/dry_run.sh CONFIG[:ARGS] DEVICES [PROCESSES] [--config.KEY=VALUE ...]
#
# 1. `lmstruct plan`: CONFIG's training update compiled for DEVICES devices from abstract shapes (nothing allocated):
#    per-device memory, FLOPs, collectives, and whether it fits common accelerators under each sharding rule.
# 2. The launch path itself: `lmstruct train` for DRY_RUN_STEPS steps (default 2) in PROCESSES processes (default 1)
#    on DEVICES fake CPU devices in all (DEVICES / PROCESSES each), joined through JAX's distributed runtime on
#    localhost exactly as the hosts of a pod slice or cluster are: every process opens the data source, reads its own
#    shards, assembles the global batch, runs the sharded update and writes a checkpoint to the workdir
#    (DRY_RUN_WORKDIR, default a new temporary folder; a bucket URL tests the bucket path too).
# The overrides apply to both; shrink what a CPU cannot run quickly with them (the model with a config's `variant`
# argument, the batch with --config.data.global_batch_size=...). The config's evaluators run after the last step.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
config=$1 devices=$2
shift 2
processes=1
if [[ $# -gt 0 && $1 != --* ]]; then processes=$1; shift; fi
if (( devices % processes )); then
  echo "error: DEVICES ($devices) must be a multiple of PROCESSES ($processes)" >&2
  exit 2
fi
python=${PYTHON:-python}
steps=${DRY_RUN_STEPS:-2}
workdir=${DRY_RUN_WORKDIR:-$(mktemp -d -t lmstruct-dry-run-XXXXXX)}
port=${DRY_RUN_PORT:-$((20000 + RANDOM % 20000))}

echo "== lmstruct plan: $config on $devices devices"
"$python" -m lmstruct.cli plan --config "$config" --devices "$devices" "$@"

echo "== lmstruct train: $steps steps, $processes process(es) x $((devices / processes)) fake CPU devices -> $workdir"
pids=()
for (( i = 0; i < processes; i++ )); do
  cluster=()
  if (( processes > 1 )); then
    cluster=(--coordinator_address "localhost:$port" --num_processes "$processes" --process_id "$i")
  fi
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$((devices / processes))" \
    "$python" -m lmstruct.cli train --config "$config" --workdir "$workdir" "${cluster[@]}" \
      --config.train.steps="$steps" --config.train.checkpoint_every="$steps" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
if (( status )); then
  echo "dry run failed (exit status $status)" >&2
  exit "$status"
fi
echo "dry run passed: $workdir/checkpoints holds step $steps"
