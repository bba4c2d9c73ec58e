#!/usr/bin/env bash
# `longmix prepare` on 8 and 16 worker processes against the raw one-thread tokenizer, per core.
#   OUT=results bash benchmarks/cpu_scaling.sh       (repository checkout as CWD, no internet)
# Needs a 16-core Linux host and python3 with the package's dependencies; about 2 minutes there.
#
# Design: the pipeline runs on the sample corpus written 40 times (74.6M tokens) with 8 and 16
# workers, the same corpus for both, so their per-phase timings and outputs compare directly
# (the token parts and stats.json must hash equal). The one-thread reference is the raw
# `encode_batch` baseline, measured on 4 copies: a rate per core, the same on any size. A
# 1-worker run of 74.6M tokens would take about 280 s, so it is not part of this script; the
# 1-worker ratio is measured on the 2-core machine (`bench_prepare.py --copies 8 --workers 1,2`).
# Results: $OUT/prepare_scaling.json (per run: tokens/s per core, ratio to the baseline,
# seconds of each phase, the serial part) and the printed tables in $OUT/prepare_scaling.log.
set -euo pipefail
OUT=${OUT:-out/cpu_scaling}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# orjson and zstandard from carried wheels where the host has none (pip download them into .carry/)
[ -d .carry ] && { python3 -m pip install --quiet --no-deps --no-index --find-links .carry orjson zstandard 2>&1 | grep -v WARNING || true; }
cores=$(nproc)
[ "$cores" -ge 16 ] || echo "warning: $cores cores; 16 workers will share them" >&2
start=$SECONDS
python3 benchmarks/bench_prepare.py --copies 40 --baseline-copies 4 --workers 8,16 \
    --no-long-documents --json "$OUT/prepare_scaling.json" 2>&1 | tee "$OUT/prepare_scaling.log"
echo "cpu_scaling.sh: $((SECONDS - start)) s on $cores cores" | tee -a "$OUT/prepare_scaling.log"
