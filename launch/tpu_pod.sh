#!/usr/bin/env bash
# Run dpkd_jax on every worker of a Cloud TPU VM pod slice (one process per host;
# jax.distributed.initialize() finds the coordinator and process ids by itself).
#
#   TPU_NAME=dpkd ZONE=us-central2-b ACCELERATOR_TYPE=v4-64 \
#   CONFIG=configs/opt13b_to_1p3b.py bash launch/tpu_pod.sh --config.mesh.fsdp=8
#
# Variables: PREFLIGHT_DEVICES (the slice's chip count, for the preflight's mesh check), TPU_NAME, ZONE, ACCELERATOR_TYPE (created if the slice does not exist),
# RUNTIME_VERSION (default tpu-ubuntu2204-base), PROJECT (default: gcloud's),
# CONFIG (default configs/opt13b_to_1p3b.py), REMOTE_DIR (default ~/dpkd_jax).
# Extra arguments go to `python -m dpkd_jax.main`. Checkpoints and models must be on
# storage every worker sees at the same path (a GCS FUSE mount or a shared disk).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/opt13b_to_1p3b.py}
REMOTE_DIR=${REMOTE_DIR:-dpkd_jax}
TPU=(gcloud compute tpus tpu-vm --zone="$ZONE" ${PROJECT:+--project="$PROJECT"})

if ! "${TPU[@]}" describe "$TPU_NAME" >/dev/null 2>&1; then
  "${TPU[@]}" create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi

# Ship this checkout (tracked files) to every worker and install it there.
cd "$(dirname "$0")/.."
git archive --format=tar.gz -o /tmp/dpkd_jax.tar.gz HEAD
"${TPU[@]}" scp /tmp/dpkd_jax.tar.gz "$TPU_NAME":/tmp/ --worker=all
"${TPU[@]}" ssh "$TPU_NAME" --worker=all --command="
  set -e; mkdir -p $REMOTE_DIR && tar -xzf /tmp/dpkd_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR &&
  python3 -m pip install -q -U 'jax[tpu]' -r requirements.txt -e ."

# Preflight on worker 0 alone (seconds, no TPU start-up on every host): a bad config, path, file
# or mesh stops here with its one-line error and exit status 2.
"${TPU[@]}" ssh "$TPU_NAME" --worker=0 --command="
  cd $REMOTE_DIR && python3 -m dpkd_jax.main --config=$CONFIG $* --config.mode=check \
  --config.check.devices=${PREFLIGHT_DEVICES:?set PREFLIGHT_DEVICES to the slice chip count}"

# All workers start together; process 0 writes logs, plots and exports.
"${TPU[@]}" ssh "$TPU_NAME" --worker=all --command="
  cd $REMOTE_DIR && python3 -m dpkd_jax.main --config=$CONFIG --config.distributed.enabled=True $*"
