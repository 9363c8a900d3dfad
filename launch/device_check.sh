#!/usr/bin/env bash
# The accelerator check, on one GPU (or TPU chip) in under 8 minutes:
#
#   launch/device_check.sh [--dry-run] [--attention NAME] [--steps N]
#
# 1. flaxft.attention_check: model.attention's dot_product and flash against xla, output
#    and q/k/v gradients at batch 8 x seq 512 x 12 heads x 64, in float32 and bfloat16,
#    timed.
# 2. flaxft.bench in bfloat16 (--config.model.dtype=bfloat16) with the fastest
#    attention the check found to agree in bfloat16 (--attention NAME fixes it instead;
#    "auto" when the check names none): bert_base and bert_large at seq 512,
#    ModernBERT-base at its context (1024), batch 32, each under its own timeout.
# Then one markdown table: model, seq, attention, dtype, tokens/s, MFU, device memory.
#
# --dry-run prints the exact commands (FASTEST stands for the check's pick unless
# --attention is given) and exits 0 on any machine. Exit status: 0 when everything ran
# and agreed, 1 when a check disagreed or a bench failed or timed out (its row says
# which), 2 on bad usage. Logs go to $FLAXFT_LOG_DIR (default: a new temporary folder,
# printed). Run with one visible device (CUDA_VISIBLE_DEVICES=0 on a larger machine).
# $PYTHON picks the interpreter (default: the project's .venv/bin/python if there is
# one, else python3).
set -euo pipefail

usage="usage: $0 [--dry-run] [--attention NAME] [--steps N]"
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  echo "$usage"
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
dry_run=0 attention="" steps=10
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --attention) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; attention=$2; shift 2 ;;
    --steps) [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "$usage" >&2; exit 2; }; steps=$2; shift 2 ;;
    *) echo "$usage (unknown argument: $1)" >&2; exit 2 ;;
  esac
done
case "$attention" in
  ""|xla|dot_product|flash|auto) ;;
  *) echo "--attention $attention: expected one of xla, dot_product, flash, auto" >&2; exit 2 ;;
esac
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
if [ -n "${PYTHON:-}" ]; then python=$PYTHON; elif [ -x "$repo/.venv/bin/python" ]; then python=$repo/.venv/bin/python; else python=python3; fi

# Timeouts (seconds, then 10 more to kill) keep the whole check under 8 minutes: 80 + 90 + 140 + 110 + 4 x 10 = 460.
check_cmd=(timeout -k 10 80 "$python" -m flaxft.attention_check --batch 8 --seq 512 --heads 12 --head_dim 64
           --dtypes float32,bfloat16 --implementations dot_product,flash)
# ModernBERT's config file names its tokenizer's special ids; the byte-level BPE the bench
# trains on the offline corpus has <s>=0, <pad>=1, </s>=2 (benchmarks/modernbert_vs_torch.py).
modernbert_ids=(--config.model.pad_token_id=1 --config.model.bos_token_id=0 --config.model.cls_token_id=0
                --config.model.eos_token_id=2 --config.model.sep_token_id=2)
models=(bert_base bert_large modernbert_base)
declare -A timeouts=([bert_base]=90 [bert_large]=140 [modernbert_base]=110)
declare -A seqs=([bert_base]=512 [bert_large]=512 [modernbert_base]=1024)
bench_cmd() {  # MODEL ATTENTION: the bench command as an array in $cmd
  local model=$1 name=$2 args=()
  case "$model" in
    bert_base) args=(--config configs/pretrain_bert_base.py) ;;
    bert_large) args=(--config configs/pretrain_bert_large.py) ;;
    modernbert_base) args=(--config configs/pretrain_modernbert_base.py "${modernbert_ids[@]}") ;;
  esac
  if [ "$model" != modernbert_base ]; then args+=(--config.data.max_predictions_per_seq=80); fi  # 15% of 512
  cmd=(timeout -k 10 "${timeouts[$model]}" "$python" -m flaxft.bench "${args[@]}" --config.seq_len="${seqs[$model]}"
       --config.global_batch_size=32 --config.model.dtype=bfloat16)
  if [ -n "$name" ]; then cmd+=(--config.model.attention="$name"); fi
  cmd+=(--steps "$steps" --warmup 2)
}

if [ "$dry_run" -eq 1 ]; then
  printf '%q ' "${check_cmd[@]}"; echo
  for model in "${models[@]}"; do
    bench_cmd "$model" "${attention:-FASTEST}"
    printf '%q ' "${cmd[@]}"; echo
  done
  exit 0
fi

log_dir=${FLAXFT_LOG_DIR:-$(mktemp -d -t flaxft-device-XXXXXX)}
mkdir -p "$log_dir"
echo "device check, logs in $log_dir" >&2
status=0
check_rc=0
"${check_cmd[@]}" 2>"$log_dir/attention_check.err" | tee "$log_dir/attention_check.out" || check_rc=$?
if [ "$check_rc" -ne 0 ]; then
  echo "attention check exited $check_rc (stderr: $log_dir/attention_check.err)" >&2
  status=1
fi
check_json=$(tail -n 1 "$log_dir/attention_check.out" 2>/dev/null || true)
field() {  # FIELD: a field of the check's JSON line ("" when absent or null)
  "$python" -c 'import json, sys
try:
    value = json.loads(sys.argv[1]).get(sys.argv[2])
except ValueError:
    value = None
print("" if value is None else str(value).lower())' "$check_json" "$1"
}
label=""
if [ -n "$attention" ]; then
  label=$attention
else
  label=$(field fastest)
  label=${label:-auto}
fi

rows=()
for model in "${models[@]}"; do
  bench_cmd "$model" "$label"
  echo "+ ${cmd[*]}" >&2
  rc=0
  "${cmd[@]}" >"$log_dir/$model.out" 2>"$log_dir/$model.err" || rc=$?
  if [ "$rc" -eq 0 ]; then
    row=$("$python" - "$log_dir/$model.out" "$model" "${label:-default}" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
mem = "n/a" if r["device_mem_gb"] is None else f"{r['device_mem_gb']:.1f} GB"
print(f"| {sys.argv[2]} | {r['seq_len']} | {sys.argv[3]} | {r['dtype']} | {r['tokens_per_sec']:,.0f} | "
      f"{r['mfu']:.3f} | {mem} |")
EOF
)
  else
    reason="exit $rc"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then reason="timed out after ${timeouts[$model]} s"; fi
    row="| $model | ${seqs[$model]} | ${label:-default} | bfloat16 | failed ($reason: $log_dir/$model.err) | | |"
    status=1
  fi
  rows+=("$row")
done

echo
echo "| model | seq | attention | dtype | tokens/s | MFU | device memory |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$status"
