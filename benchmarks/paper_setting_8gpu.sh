#!/usr/bin/env bash
# The paper's setting on 8 GPUs: a LLaMA-2-7B-shaped model (random weights) at 80K and 128K,
# ~4M-token batches by gradient accumulation, constant LR 2e-5, a few optimizer steps each.
#   DATA80=<prepared at 80K> DATA128=<prepared at 128K> OUT=results bash benchmarks/paper_setting_8gpu.sh
# Each prepared folder needs STEPS x 4M tokens (default 3 steps: `longmix prepare ... --tokens 13M`).
# VOCAB must match the data's tokenizer (49,152 for the built-in one, 32,000 for LLaMA-2's).
# Compare with `longmix plan --model llama2-7b --seq-len 80K --gpus 8 --paper`.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast
STEPS=${STEPS:-3}
W=$(mktemp -d)
mkdir -p "$OUT"
python3 - "$W/llama2-7b.json" "${VOCAB:-49152}" <<'PY'
import sys
from transformers import LlamaConfig

LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, vocab_size=int(sys.argv[2]), max_position_embeddings=4096,
            rms_norm_eps=1e-5).to_json_file(sys.argv[1])
PY
RUN="train --init-config $W/llama2-7b.json --rope-theta 5e5 --lr 2e-5 --schedule constant --warmup-steps 0
     --steps $STEPS --activation-checkpointing 1 --no-progress"
# 48 x 80K = 3.93M and 32 x 128K = 4.19M tokens a batch: whole sequences on each of 8 GPUs
for setting in "7b-80k 80K 3840K $DATA80" "7b-128k 128K 4096K $DATA128"; do
  read -r name len batch data <<<"$setting"
  torchrun --standalone --nproc-per-node 8 -m longmix $RUN --data "$data" --seq-len "$len" --batch-tokens "$batch" \
    --out "$W/$name" 2>"$OUT/$name.err"
  cp "$W/$name/log.jsonl" "$OUT/$name.jsonl" 2>/dev/null
  echo "$name: $(tail -n 1 "$OUT/$name.jsonl" 2>/dev/null || tail -n 1 "$OUT/$name.err")"
done
