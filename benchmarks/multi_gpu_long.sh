#!/usr/bin/env bash
# Longer sequences on N GPUs: 1 -> N GPU data-parallel scaling at 64K (FSDP2, same global
# batch, so the losses must match), and a sequence too long for one GPU trained with
# context parallelism N (the one-GPU attempt at that length is expected to run out of memory).
#   DATA64=<prepared at 64K> DATA_LONG=<prepared at LONG> LONG=384K CONFIG=<~1B config.json> \
#   GPUS=0,1 OUT=results bash benchmarks/multi_gpu_long.sh     (LONG_STEPS, LONG_TIMEOUT, SHORT_K optional)
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast
IFS=, read -ra IDS <<<"${GPUS:-0,1}"
N=${#IDS[@]}
SHORT_K=${SHORT_K:-64}  # the data-parallel length in K tokens; DATA64 is prepared at it
RUN="train --init-config $CONFIG --rope-theta 1e6 --lr 1e-4 --no-compile --no-progress"
W=$(mktemp -d)
mkdir -p "$OUT"
one() { CUDA_VISIBLE_DEVICES=${IDS[0]} python3 -m longmix "$@"; }
many() { CUDA_VISIBLE_DEVICES=$GPUS torchrun --standalone --nproc-per-node "$N" -m longmix "$@"; }
keep() { [ -f "$W/$1/log.jsonl" ] && cp "$W/$1/log.jsonl" "$OUT/$1.jsonl"; rm -rf "${W:?}/$1"; }  # each log as soon as it exists

one $RUN --data "$DATA64" --seq-len "${SHORT_K}K" --batch-tokens "$((SHORT_K * N))K" --steps 4 --out "$W/one-gpu-64k" 2>"$OUT/one-gpu-64k.err"
keep one-gpu-64k
many $RUN --data "$DATA64" --seq-len "${SHORT_K}K" --batch-tokens "$((SHORT_K * N))K" --steps 4 --out "$W/fsdp$N-64k" 2>"$OUT/fsdp$N-64k.err"
keep "fsdp$N-64k"
# one step, at most LONG_TIMEOUT seconds: on a card with room it simply trains (then the length is not CP-only)
CUDA_VISIBLE_DEVICES=${IDS[0]} timeout "${LONG_TIMEOUT:-240}" python3 -m longmix $RUN --data "$DATA_LONG" \
  --seq-len "$LONG" --batch-tokens "$LONG" --steps 1 --activation-checkpointing 1 --out "$W/one-gpu-long" 2>"$OUT/one-gpu-long.err"
echo "one GPU at $LONG: exit $?" >>"$OUT/one-gpu-long.err"
keep one-gpu-long
many $RUN --data "$DATA_LONG" --seq-len "$LONG" --batch-tokens "$LONG" --steps "${LONG_STEPS:-2}" --activation-checkpointing 1 \
  --context-parallel "$N" --out "$W/cp$N-long" 2>"$OUT/cp$N-long.err"
keep "cp$N-long"
python3 - "$OUT" "$N" "$LONG" <<'PY'
import json, sys
from pathlib import Path
out, n, long = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rates = {}
for run in ("one-gpu-64k", f"fsdp{n}-64k", "one-gpu-long", f"cp{n}-long"):
    log = out / f"{run}.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if not rows:  # the trainer opens its log before the first step: an empty one means no step finished
        err = (out / f"{run}.err").read_text().strip().splitlines()
        print(run, "no steps:", next((l for l in reversed(err) if "memory" in l.lower()), err[-1] if err else "?")[:200])
        continue
    rates[run] = rows[-1]["tokens_per_s"]
    print(run, [round(r["loss"], 5) for r in rows], "tok/s", round(rows[-1]["tokens_per_s"]),
          "MFU", round(100 * (rows[-1].get("mfu") or 0), 1), "GiB", round(rows[-1]["memory_gib"] or 0, 1))
if "one-gpu-64k" in rates and f"fsdp{n}-64k" in rates:
    print(f"64K scaling 1 -> {n} GPUs: {rates[f'fsdp{n}-64k'] / rates['one-gpu-64k']:.2f}x,",
          f"{rates[f'fsdp{n}-64k'] / rates['one-gpu-64k'] / n:.2f}x per GPU")
PY
