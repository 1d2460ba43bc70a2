#!/usr/bin/env bash
# lmstruct on a Cloud TPU VM pod slice (docs/launch.md, "TPU VM pod slice").
#
#   scripts/tpu_pod.sh create | install | train | logs | resume | delete
#
#   create   create the slice (TPU_NAME, ZONE, ACCELERATOR, RUNTIME; SPOT=1 for a spot slice)
#   install  on every worker (--worker=all): clone LMSTRUCT_REPO, install it with the GCS client and the TPU build of
#            the JAX version it pins, fetch the CLIP vocabulary
#   train    on every worker, in the background: lmstruct train --distributed --config CONFIG --workdir WORKDIR
#            (a gs:// workdir: checkpoints, metrics and results live in the bucket, not on the slice)
#   logs     the last lines of every worker's log
#   resume   after a preemption: delete the preempted slice, create, install and train again; the same command finds
#            the latest checkpoint in WORKDIR and continues from it (data position included)
#   delete   delete the slice
#
# Settings (environment): TPU_NAME (lmstruct), ZONE (us-central2-b), ACCELERATOR (v4-32), RUNTIME
# (tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e), LMSTRUCT_REPO,
# CONFIG and WORKDIR (required by train and resume). CONFIG's `devices` must be the slice's chip count
# (v4-32: 16 chips; the name counts TensorCores for v4 and chips for v5e/v6e).
set -euo pipefail
TPU_NAME=${TPU_NAME:-lmstruct}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
LMSTRUCT_REPO=${LMSTRUCT_REPO:-https://github.com/lmstruct/lmstruct}

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

create() {
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" ${SPOT:+--spot}
}

install() {
  on_all_workers "set -e
    [ -d ~/lmstruct ] || git clone --depth 1 $LMSTRUCT_REPO ~/lmstruct
    python3 -m venv ~/venv
    ~/venv/bin/pip install -q -e ~/lmstruct[gcs]
    ~/venv/bin/pip install -q \"jax[tpu]==\$(~/venv/bin/python -c 'import jax; print(jax.__version__)')\"
    ~/venv/bin/python -m lmstruct.data.assets fetch"
}

train() {
  : "${CONFIG:?set CONFIG, e.g. configs/paper_cc3m.py:shards=gs://bucket/cc3m/{00000..00331}.tar,devices=16}"
  : "${WORKDIR:?set WORKDIR, e.g. gs://bucket/runs/cc3m_gc}"
  # Every worker runs the same command; --distributed lets JAX find the slice's other hosts.
  on_all_workers "cd ~/lmstruct && nohup ~/venv/bin/lmstruct train --distributed --config '$CONFIG' \
    --workdir '$WORKDIR' > ~/train.log 2>&1 &"
}

logs() {
  on_all_workers "tail -n 5 ~/train.log"
}

delete() {
  gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
}

case ${1:-} in
  create) create ;;
  install) install ;;
  train) train ;;
  logs) logs ;;
  resume) delete || true; create; install; train ;;
  delete) delete ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
