#!/usr/bin/env bash
# FSDP2 and context parallelism on 2 GPUs against one GPU, same data and global batch.
#   DATA=out/smoke/sample CONFIG=out/smoke/llama1b/config.json OUT=results bash benchmarks/multi_gpu.sh
# (DATA: `longmix prepare --sample --seq-len 32K`; CONFIG: a ~1B LLaMA config.json.)
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast
RUN="train --data $DATA --init-config $CONFIG --seq-len 32K --rope-theta 1e6 --lr 1e-4 --steps 4 --no-compile --no-progress"
W=$(mktemp -d)
CUDA_VISIBLE_DEVICES=0 python3 -m longmix $RUN --batch-tokens 64K --out $W/one-gpu-64k
torchrun --standalone --nproc-per-node 2 -m longmix $RUN --batch-tokens 64K --out $W/fsdp2-64k
CUDA_VISIBLE_DEVICES=0 python3 -m longmix $RUN --batch-tokens 32K --out $W/one-gpu-32k
torchrun --standalone --nproc-per-node 2 -m longmix $RUN --batch-tokens 32K --context-parallel 2 --out $W/cp2-32k
mkdir -p "$OUT"
for run in one-gpu-64k fsdp2-64k one-gpu-32k cp2-32k; do cp $W/$run/log.jsonl "$OUT/$run.jsonl"; done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for run in ("one-gpu-64k", "fsdp2-64k", "one-gpu-32k", "cp2-32k"):
    rows = [json.loads(l) for l in (out / f"{run}.jsonl").read_text().splitlines()]
    print(run, [round(r["loss"], 5) for r in rows], "tok/s", round(rows[-1]["tokens_per_s"]), "GiB", round(rows[-1]["memory_gib"], 1))
PY
