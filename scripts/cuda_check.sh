#!/usr/bin/env bash
# Runs the CUDA and mixed-precision paths end to end on a GPU machine and prints one line per run.
#   bash scripts/cuda_check.sh [OUT_DIR]
# Each run uses trainer.device=cuda; fp16 runs exercise the GradScaler path, bf16 runs autocast.
set -euo pipefail
out="${1:-outputs/cuda_check}"
shift $(( $# > 0 ? 1 : 0 ))   # the rest are extra overrides for the MNIST-family runs
mtl() { python3 -c "import sys; from mtl_train.cli import main; sys.argv[0] = 'mtl-train'; main()" "$@"; }
run() {
  local name="$1"; shift
  mtl trainer.device=cuda trainer.progress=none "hydra.run.dir=$out/$name" "$@" > "$out/$name.log" 2>&1 \
    || { echo "$name FAILED"; tail -20 "$out/$name.log"; return 1; }
  python3 - "$out/$name/summary.json" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
val = "; ".join(f"{t} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "loss") for t, m in s["final"]["test"].items())
epoch = sum(s["epoch_time_s"]) / len(s["epoch_time_s"])
print(f"{sys.argv[2]:<28} {s['device']:<40} amp={s['amp']:<5} steps={s['steps']:<5} wall={s['wall_time_s']:.1f}s "
      f"epoch={epoch:.2f}s | test: {val}")
PY
}
mkdir -p "$out"
run ecg_ew_fp32
run ecg_ew_bf16 trainer.amp=bf16
run ecg_full_gradnorm_fp16 task=ecg_full weighting=gradnorm trainer.amp=fp16
run ecg_full_uw_bf16 task=ecg_full weighting=uw trainer.amp=bf16
run fashion_cls_seg_gradnorm_bf16 task=cls_seg dataset=fashion_mnist weighting=gradnorm trainer.amp=bf16 "$@"
run fashion_cls_seg_ew_fp16 task=cls_seg dataset=fashion_mnist weighting=ew trainer.amp=fp16 "$@"
run fashion_cls_rec_static_fp32 task=cls_rec dataset=fashion_mnist weighting=static "$@"
