#!/usr/bin/env bash
# flaxft on a Cloud TPU VM pod: create (or reuse) the pod, install flaxft on every
# worker, and run flaxft.main on all workers at once. JAX finds the pod's processes by
# itself (jax.distributed cluster detection), so no coordinator flags are needed.
#
#   launch/tpu_pod.sh [--dry-run] NAME ZONE ACCELERATOR_TYPE -- <flaxft.main arguments>
#
# This checkout's committed HEAD (git archive) is copied to ~/flaxft on every worker and
# installed there, so configs/ travel with it. The workdir, corpus and tokenizer paths must be on a
# filesystem every worker sees (a Filestore/NFS mount or gcsfuse), since all processes
# write checkpoints and read data.
#
# Example: BERT-Base on a v4-32 pod (16 chips: 4 hosts x 4), FSDP over all chips:
#   launch/tpu_pod.sh bert-pod us-central2-b v4-32 -- \
#     --config configs/pretrain_bert_base.py --workdir /mnt/shared/bert_base \
#     --config.mesh.data=1 --config.mesh.fsdp=-1 --config.model.dtype=bfloat16 \
#     --config.data.path=/mnt/shared/corpus --config.data.tokenizer=/mnt/shared/uncased_vocab
#
# --dry-run prints every command instead of running it. TPU_VERSION sets the TPU
# software version (default tpu-ubuntu2204-base).
set -euo pipefail

usage="usage: $0 [--dry-run] NAME ZONE ACCELERATOR_TYPE -- <flaxft.main arguments>"
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  echo "$usage"
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  echo "$usage" >&2
  exit 2
fi
name=$1 zone=$2 accelerator=$3
shift 4
version=${TPU_VERSION:-tpu-ubuntu2204-base}
repo=$(cd "$(dirname "$0")/.." && pwd)
args=$(printf ' %q' "$@")

run() {
  if [ "$dry_run" -eq 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [ "$dry_run" -eq 1 ] || ! gcloud compute tpus tpu-vm describe "$name" --zone "$zone" >/dev/null 2>&1; then
  run gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accelerator" --version "$version"
fi
archive=${TMPDIR:-/tmp}/flaxft-$$.tar.gz
run git -C "$repo" archive --format=tar.gz --output "$archive" HEAD
run gcloud compute tpus tpu-vm scp --worker=all --zone "$zone" "$archive" "$name:flaxft.tar.gz"
run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all \
  --command "rm -rf ~/flaxft && mkdir ~/flaxft && tar xzf flaxft.tar.gz -C ~/flaxft && pip install -U 'jax[tpu]' ~/flaxft"
run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all \
  --command "cd ~/flaxft && HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python3 -m flaxft.main$args"
