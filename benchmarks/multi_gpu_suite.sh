#!/usr/bin/env bash
# Issue #11: the multi-GPU checks, in one call on a lent multi-GPU machine (nvidia-h100-x2 or larger), from the repo
# root, carrying .whl and .gpudata like gpu_suite.sh. For each model (Transformer++ d16, SambaY d16) and strategy
# (fsdp, ddp): 20 steps on NGPU GPUs and on 1 GPU with the same global batch (the 1-GPU run accumulates more
# micro-batches), then a loss-parity / tok/s-per-GPU / peak-memory table; Muon under FSDP2 on NGPU vs 1 GPU; a
# sharded checkpoint saved on NGPU GPUs resumed on NGPU/2. NCCL's NVLink multicast stays off (KINDS.md).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
STEPS=${STEPS:-20}
export NCCL_NVLS_ENABLE=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 ARCHSCALE_CACHE=$PWD/.gpudata HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

common=(--set budget.steps=$STEPS --set system.val_every=$STEPS --set system.log_every=1
        --set system.checkpoint_every=100000 --set system.save_final_checkpoint=false)
run() {  # run NAME NPROC RECIPE [extra --set ...]
  local name=$1 n=$2 recipe=$3; shift 3
  timeout 900 torchrun --standalone --nproc_per_node="$n" -m archscale train "benchmarks/gpu_recipes.py:$recipe" \
    --out "/tmp/runs/$name" "${common[@]}" --set system.num_devices="$n" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $?"; cp "/tmp/runs/$name/metrics.jsonl" "$OUT/metrics_$name.jsonl" 2>/dev/null
}
for model in tfpp_d16 sambay_d16; do
  run "${model}_1gpu" 1 "$model"
  for strategy in fsdp ddp; do
    run "${model}_${strategy}${NGPU}" "$NGPU" "$model" --set system.strategy=$strategy
  done
done
run muon_1gpu 1 tfpp_d16 --set optimizer.name=muon
run "muon_fsdp${NGPU}" "$NGPU" tfpp_d16 --set optimizer.name=muon --set system.strategy=fsdp
# Sharded checkpoint on NGPU GPUs, resumed on NGPU/2 for 5 more steps.
run "ckpt_save${NGPU}" "$NGPU" tfpp_d16 --set system.strategy=fsdp --set system.save_final_checkpoint=true
half=$(( NGPU > 1 ? NGPU / 2 : 1 ))
cp -r "/tmp/runs/ckpt_save${NGPU}" "/tmp/runs/ckpt_resume${half}"
run "ckpt_resume${half}" "$half" tfpp_d16 --set system.strategy=fsdp --set budget.steps=$((STEPS + 5)) \
  --set system.resume=true

python3 - "$OUT" "$NGPU" <<'PY'
import json, sys, pathlib
out, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def rows(name):
    p = out / f"metrics_{name}.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []
def summary(name):
    r = [x for x in rows(name) if "tok_per_s" in x]
    if not r: return None
    tail = r[len(r) // 2:]
    return {"loss": {x["step"]: x["loss"] for x in r}, "tok_s": sorted(x["tok_per_s"] for x in tail)[len(tail) // 2],
            "mem": max(x.get("peak_mem_gib", 0) for x in r)}
print(f"{'run':<24} {'max |Δloss| vs 1 GPU':>22} {'tok/s':>10} {'tok/s/GPU':>10} {'eff.':>6} {'mem GiB':>8}")
for base, runs in [("tfpp_d16_1gpu", [f"tfpp_d16_fsdp{n}", f"tfpp_d16_ddp{n}"]),
                   ("sambay_d16_1gpu", [f"sambay_d16_fsdp{n}", f"sambay_d16_ddp{n}"]), ("muon_1gpu", [f"muon_fsdp{n}"])]:
    b = summary(base)
    if b is None: print(f"{base}: no metrics"); continue
    print(f"{base:<24} {'—':>22} {b['tok_s']:>10.0f} {b['tok_s']:>10.0f} {'1.00':>6} {b['mem']:>8.1f}")
    for name in runs:
        s = summary(name)
        if s is None: print(f"{name}: no metrics"); continue
        d = max(abs(s["loss"][k] - b["loss"][k]) for k in b["loss"] if k in s["loss"])
        print(f"{name:<24} {d:>22.2e} {s['tok_s']:>10.0f} {s['tok_s']/n:>10.0f} {s['tok_s']/n/b['tok_s']:>6.2f} {s['mem']:>8.1f}")
res = [x for x in rows(f"ckpt_resume{max(1, n // 2)}") if "loss" in x]
print("resume on a different GPU count: steps", [x["step"] for x in res][:3], "...", "losses", [round(x["loss"], 4) for x in res][:3])
PY
