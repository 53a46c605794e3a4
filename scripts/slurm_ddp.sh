#!/bin/bash
# Multi-node data-parallel training on SLURM: one task per node, each launching torchrun over its GPUs.
# Resubmit with RESUME=true to continue a run that was stopped (the job's SIGTERM makes it checkpoint).
#   sbatch scripts/slurm_ddp.sh                       # a new run in outputs/slurm_<job id>
#   RUN_DIR=outputs/slurm_123 RESUME=true sbatch scripts/slurm_ddp.sh
#SBATCH --nodes=2 --ntasks-per-node=1 --gpus-per-node=4 --cpus-per-task=16 --time=04:00:00 --signal=TERM@120
set -euo pipefail
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes="$SLURM_NNODES" --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint="$head:29500" \
    -m mtl_train.cli task=cls_seg weighting=upgrad \
    hydra.run.dir="${RUN_DIR:-outputs/slurm_$SLURM_JOB_ID}" trainer.resume="${RESUME:-false}"
