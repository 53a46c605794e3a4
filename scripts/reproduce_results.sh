#!/bin/bash
# The runs behind docs/results.md: 13 weighting methods x 3 seeds plus single-task baselines, on MultiFashion with
# Kurin et al.'s (NeurIPS 2022) protocol and on the ECG four-task set. EPOCHS / NUM_TRAIN / ECG_EPOCHS shorten the
# runs for a CPU; the defaults are what docs/results.md reports.
#   bash scripts/reproduce_results.sh                 # writes outputs/results/{multi_fashion,ecg_full}{,_stl}
#   DATASET=multi_mnist EPOCHS=100 NUM_TRAIN=null bash scripts/reproduce_results.sh   # the published set-up (needs MNIST)
set -euo pipefail
EPOCHS=${EPOCHS:-3}
NUM_TRAIN=${NUM_TRAIN:-10000}
ECG_EPOCHS=${ECG_EPOCHS:-4}
DATASET=${DATASET:-multi_fashion}
OUT=${OUT:-outputs/results}
METHODS=ew,uw,gradnorm,dwa,rlw,mgda,pcgrad,cagrad,imtl,nash_mtl,famo,aligned_mtl,upgrad
quiet="trainer.progress=none trainer.plots=false"

images="experiment=kurin_multi_mnist dataset=$DATASET trainer.max_epochs=$EPOCHS dataset.num_train=$NUM_TRAIN $quiet"
mtl-train -m $images stl=true seed=0,1,2 hydra.sweep.dir="$OUT/${DATASET}_stl"
mtl-train -m $images weighting=$METHODS seed=0,1,2 baselines="$OUT/${DATASET}_stl" hydra.sweep.dir="$OUT/$DATASET"

ecg="task=ecg_full trainer.max_epochs=$ECG_EPOCHS $quiet"
mtl-train -m $ecg stl=true seed=0,1,2 hydra.sweep.dir="$OUT/ecg_full_stl"
mtl-train -m $ecg weighting=$METHODS seed=0,1,2 baselines="$OUT/ecg_full_stl" hydra.sweep.dir="$OUT/ecg_full"
