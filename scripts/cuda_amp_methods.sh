#!/usr/bin/env bash
# Trains every weighting method under fp16 autocast + GradScaler on CUDA (Fashion-MNIST cls+seg, and the 4-task
# ECG set for methods that accept value tasks) and prints one line per run: final weights, test metrics, wall time.
#   bash scripts/cuda_amp_methods.sh [OUT_DIR] [extra overrides...]
set -uo pipefail
out="${1:-outputs/cuda_amp_methods}"
shift $(( $# > 0 ? 1 : 0 ))
mtl() { python3 -c "import sys; from mtl_train.cli import main; sys.argv[0] = 'mtl-train'; main()" "$@"; }
report() {
  python3 - "$1" "$2" <<'PY'
import csv, json, sys
run, name = sys.argv[1], sys.argv[2]
s = json.load(open(f"{run}/summary.json"))
last = list(csv.reader(open(f"{run}/weights.csv")))[-1][1:]
test = "; ".join(f"{t} {m[s['primary_metric'][t]]:.4f}" for t, m in s["final"]["test"].items())
print(f"{name:<32} weights {','.join(f'{float(w):.3g}' for w in last):<28} test {test:<60} wall {s['wall_time_s']:.1f}s")
PY
}
mkdir -p "$out"
for method in $(ls configs/weighting | sed 's/\.yaml$//'); do
  for task in cls_seg ecg_full; do
    case "$task:$method" in ecg_full:max_entropy|ecg_full:performance) continue;; esac
    data=(); [ "$task" = cls_seg ] && data=(dataset=fashion_mnist dataset.num_train=20000)
    name="${task}_${method}_fp16"
    if mtl task=$task "${data[@]}" weighting=$method trainer.device=cuda trainer.amp=fp16 trainer.max_epochs=2 \
        trainer.progress=none "hydra.run.dir=$out/$name" "$@" > "$out/$name.log" 2>&1; then
      report "$out/$name" "$name"
    else
      echo "$name FAILED: $(grep -m1 -E 'error|Error' "$out/$name.log")"
    fi
  done
done
