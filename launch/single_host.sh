#!/usr/bin/env bash
# One machine, all its accelerators (GPUs or a single TPU VM host), one process.
#
#   bash launch/single_host.sh configs/gpt2_xl_to_base.py --config.mesh.fsdp=2
#
# The mesh defaults to pure data parallel over every local device (config.mesh.data=-1).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/demo.py}
shift || true
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# Preflight: config, models, tokenizers, data, mesh and work dir checked in seconds before the run.
python -m dpkd_jax.main --config="$CONFIG" "$@" --config.mode=check
exec python -m dpkd_jax.main --config="$CONFIG" "$@"
