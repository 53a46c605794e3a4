#!/usr/bin/env bash
# One check of a GPU machine, in under 8 minutes on one GPU with 16 cores, everything written into OUT:
#   1. env.txt: torch, CUDA device, driver, git commit;
#   2. pytest_cuda.txt: the CUDA tests (`pytest -m cuda`);
#   3. bench_<fp32|bf16>_<eager|graphs|scaling>.md / .json: scripts/bench.py on the GPU in fp32 and bf16: every
#      method at k = 4 on MultiLeNet, batch 256 (where the targets are checked), without and with CUDA graphs, and a
#      subset at k = 2 and 8; rep and params modes, batched and looped trunk Jacobians, peak memory;
#   4. full_budget.md: MultiFashion under Kurin et al.'s protocol (experiment=kurin_multi_mnist dataset=multi_fashion,
#      100 epochs) for 12 methods and the single-task baselines, seeds 0, 1, 2 in that order, as concurrent processes
#      stopped at a deadline; the comparison (mean ± std, Δm) of the runs that finished, by mtl_train.report;
#   5. summary.md (env, stages, the tests' result line, every PASS/MISS line, the full-budget table) and
#      gpu_check.tar.gz (all of OUT and the runs' files; checkpoints and the data cache left out).
#
#   bash scripts/gpu_check.sh OUT           # on a GPU machine; OUT must be new or empty
#   bash scripts/gpu_check.sh OUT --dry     # the same stages on CPU with small sizes, in two minutes or so
#
# Every stage runs under `timeout` and the full-budget runs stop at a fixed deadline (the time plan below), so the
# check always ends with its summary and tarball; a stage that fails or times out is reported and the next one runs.
# The exit status is 0 when every stage succeeded, 1 when one did not (2: bad arguments; 130: interrupted).
# Runs from a checkout without `pip install` (PYTHONPATH gets the repository root). Environment:
#   FASHION_MNIST_DIR  the folder of Fashion-MNIST's four IDX files (default /usr/share/datasets/fashion-mnist)
#   EPOCHS (100; dry 2), SEEDS (0,1,2; dry 0), JOBS (runs at a time: 13; dry 3), METHODS (12, cheap ones first;
#   dry ew,pcgrad), FULL_EXTRA (more overrides for every full-budget run, e.g. trainer.cuda_graphs=true),
#   STAGES (env,bench,pytest,full: the stages to run), TOTAL_S (470: the plan's seconds; its deadlines move with it),
#   PYTHON (python3), GPU_CHECK_WORK (run directories and the data cache; default OUT/work), GIT_COMMIT (reported
#   when the checkout has no .git)
set -uo pipefail

usage="usage: bash scripts/gpu_check.sh OUT [--dry]"
if [[ $# -lt 1 || $# -gt 2 || ( $# -eq 2 && ${2:-} != --dry ) ]]; then
  echo "error: wrong arguments '$*'; $usage" >&2
  exit 2
fi
DRY=false
[[ $# -eq 2 ]] && DRY=true
OUT=$(realpath -m "$1")
WORK=$(realpath -m "${GPU_CHECK_WORK:-$OUT/work}")
FASHION=$(realpath -m "${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}")
for path in "$WORK" "$FASHION"; do   # both go into Hydra overrides, unquoted
  if [[ ! $path =~ ^[A-Za-z0-9_./-]+$ ]]; then
    echo "error: the path '$path' has characters other than letters, digits and _ . / -; give GPU_CHECK_WORK" \
      "(or OUT) and FASHION_MNIST_DIR plain paths" >&2
    exit 2
  fi
done
if [[ -n $(ls -A "$OUT" 2>/dev/null) ]]; then
  echo "error: OUT=$1 is not empty; give a new or empty folder ($usage)" >&2
  exit 2
fi
if [[ -n $(ls -A "$WORK/full" 2>/dev/null) ]]; then
  echo "error: GPU_CHECK_WORK=$WORK already holds full-budget runs ($WORK/full); give a new folder or delete" \
    "that one" >&2
  exit 2
fi
mkdir -p "$OUT/logs" "$WORK/full" "$WORK/data" || { echo "error: cannot create OUT=$OUT and $WORK" >&2; exit 2; }
FULL=$WORK/full
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XDG_CACHE_HOME=$WORK/cache   # the data checksums' cache (mtl_train.data.sources)
export COLUMNS=200                  # rich's tables in the logs, unwrapped
cd "$ROOT" || exit 2

# The time plan, in seconds from the start. Each stage runs under its own limit, cut to the time left before its
# end: the bench runs end by BENCH_END, so that the full-budget runs (with the CUDA tests beside them, on a core of
# their own) get at least MIN_RUNS_S; those runs stop at RUNS_END; the report ends by END - PACK_S, and the summary and
# the tarball take the rest. Expected on an H200 (not measured yet): env 10 s, each bench run 30-60 s, so the
# full-budget runs get about 3 minutes.
TOTAL_S=${TOTAL_S:-470}   # the whole check: under 8 minutes
ENV_S=60              # a cold start of torch and CUDA
BENCH_K4_S=70         # per precision and graphs setting: every method at k = 4 (fp32 eager: with the data paths)
BENCH_SCALING_S=50    # per precision: the subset at k = 2 and 8, graphs off and on
MIN_RUNS_S=120
PYTEST_S=180
REPORT_S=30
PACK_S=15
START=$(date +%s)
END=$((START + TOTAL_S))
RUNS_END=$((END - PACK_S - REPORT_S))
BENCH_END=$((RUNS_END - MIN_RUNS_S))
CAP=$BENCH_END        # no stage outlasts CAP

STAGES=${STAGES:-env,bench,pytest,full}   # the stages to run (a comma-separated subset)
if $DRY; then
  MODE="Dry run on CPU"
  DEVICE=cpu
  EPOCHS=${EPOCHS:-2}
  SEEDS=${SEEDS:-0}
  JOBS=${JOBS:-3}
  METHODS=${METHODS:-ew,pcgrad}
  full_size=(dataset.num_train=512 dataset.num_test=256)
  bench_common=(--device cpu --threads 1 --quick)
  bench_k4=(--methods ew,pcgrad,mgda,famo)
  bench_scaling=(--methods ew,pcgrad)
else
  MODE="GPU check"
  DEVICE=cuda
  EPOCHS=${EPOCHS:-100}
  SEEDS=${SEEDS:-0,1,2}
  JOBS=${JOBS:-13}
  METHODS=${METHODS:-ew,rlw,dwa,uw,famo,gradnorm,mgda,pcgrad,imtl,cagrad,nash_mtl,aligned_mtl}
  full_size=()
  bench_common=(--device cuda --setups lenet --repeats 5 --steps 4 --warmup 2)
  bench_k4=(--tasks 4 --methods all)
  bench_scaling=(--tasks 2,8 --methods ew,pcgrad,mgda,cagrad,nash_mtl,famo,gradnorm)
fi
bench_common+=(--jacobians both)

# ---- stage bookkeeping -------------------------------------------------------------------------------------------

# record NAME CODE SECONDS LIMIT LOG STATUS: one line of stages.tsv (read by scripts/gpu_check_summary.py).
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$OUT/stages.tsv"
  echo "gpu_check: $1: $6 ($3 s)"
}

# status_text NAME CODE LIMIT: ok, timed out or failed.
status_text() {
  case $2 in
    0) echo ok;;
    124|137) echo "timed out after $3 s";;
    5) [[ $1 == pytest* ]] && echo "failed: no tests collected (exit 5)" || echo "failed (exit 5)";;
    *) echo "failed (exit $2)";;
  esac
}

# time_left: seconds until CAP.
time_left() { echo $((CAP - $(date +%s))); }

# run_stage NAME LIMIT STDOUT STDERR COMMAND...: COMMAND under `timeout` (LIMIT, cut to the time left), its output in
# OUT/STDOUT and OUT/STDERR (the same name: both in one file), then one line in stages.tsv.
run_stage() {
  local name=$1 limit=$2 stdout=$3 stderr=$4 start=$SECONDS code
  shift 4
  (( limit > $(time_left) )) && limit=$(time_left)
  if (( limit <= 0 )); then
    record "$name" 1 0 0 "$stderr" "skipped: no time left"
    return
  fi
  if [[ $stdout == "$stderr" ]]; then
    timeout -k 10 "$limit" "$@" > "$OUT/$stdout" 2>&1 &
  else
    timeout -k 10 "$limit" "$@" > "$OUT/$stdout" 2> "$OUT/$stderr" &
  fi
  wait $!
  code=$?
  record "$name" "$code" $((SECONDS - start)) "$limit" "$stderr" "$(status_text "$name" "$code" "$limit")"
}

# stop_jobs: on a signal, stop this shell's background jobs by their ids (each `timeout` passes it on) and wait.
stop_jobs() {
  local pids
  pids=$(jobs -p)
  [[ -n $pids ]] && kill -TERM $pids 2>/dev/null
  wait
}

# ---- environment -------------------------------------------------------------------------------------------------

commit() {
  if git -C "$ROOT" rev-parse --git-dir > /dev/null 2>&1; then
    echo "$(git -C "$ROOT" rev-parse --short=12 HEAD) ($(git -C "$ROOT" status --porcelain | wc -l) files changed)"
  else
    echo "${GIT_COMMIT:-unknown (not a git checkout; set GIT_COMMIT)}"
  fi
}

ENV_PY='
import datetime, os, platform, sys
import torch
mode, driver, commit = sys.argv[1:]
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    device = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
else:
    device = "no CUDA device"
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"{mode}, {when}: torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
      f"{device}, driver {driver}, Python {platform.python_version()}, {os.cpu_count()} CPUs, commit {commit}")
'

environment() {
  local driver
  driver=$(timeout 20 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  run_stage env "$ENV_S" env.txt logs/env.log "$PY" -c "$ENV_PY" "$MODE" "${driver:-none (no nvidia-smi)}" "$(commit)"
  { echo; timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } >> "$OUT/env.txt"
}

# ---- bench -------------------------------------------------------------------------------------------------------

# bench PRECISION AMP PART LIMIT ARGS...: one bench run, its markdown in bench_<precision>_<part>.md.
bench() {
  local precision=$1 amp=$2 part=$3 limit=$4
  shift 4
  local name="bench_${precision}_${part}"
  run_stage "$name" "$limit" "$name.md" "logs/$name.log" "$PY" -u scripts/bench.py "${bench_common[@]}" \
    --amp "$amp" "$@" --json "$OUT/$name.json"
}

# ---- full-budget runs --------------------------------------------------------------------------------------------

# plan: FULL/planned.tsv, every run in launch order (each seed's single-task baselines and methods before the next
# seed's): config, seed, run directory under FULL, command.
plan() {
  local seed config dir
  local -a common=(experiment=kurin_multi_mnist dataset=multi_fashion "trainer.max_epochs=$EPOCHS"
                   "trainer.device=$DEVICE" trainer.progress=none trainer.plots=false dataset.download=false
                   "dataset.root=$WORK/data" "dataset.system_dirs=[$FASHION]" "${full_size[@]}")
  # shellcheck disable=SC2206  # FULL_EXTRA: overrides separated by spaces
  common+=(${FULL_EXTRA:-})
  for seed in ${SEEDS//,/ }; do
    for config in stl ${METHODS//,/ }; do
      if [[ $config == stl ]]; then
        dir=stl/seed$seed
        set -- stl=true
      else
        dir=methods/$config/seed$seed
        set -- "weighting=$config"
      fi
      printf '%s\t%s\t%s\t%s\n' "$config" "$seed" "$dir" "$(printf '%q ' OMP_NUM_THREADS=1 "$PY" -m mtl_train.cli \
        "${common[@]}" "$@" "seed=$seed" "hydra.run.dir=$FULL/$dir")" >> "$FULL/planned.tsv"
    done
  done
}

# launch CONFIG SEED DIR LIMIT COMMAND...: one run under `timeout`, its output in FULL/DIR.log, then a line of
# FULL/outcomes.tsv: config, seed, exit status, seconds.
launch() {
  trap stop_jobs TERM INT
  local config=$1 seed=$2 dir=$3 limit=$4 start=$SECONDS code
  shift 4
  mkdir -p "$(dirname "$FULL/$dir")"
  timeout -k 10 "$limit" "$@" > "$FULL/$dir.log" 2>&1 &
  wait $!
  code=$?
  printf '%s\t%s\t%s\t%s\n' "$config" "$seed" "$code" $((SECONDS - start)) >> "$FULL/outcomes.tsv"
}

# launch_all: every planned run, JOBS at a time, until RUNS_END; a run still going then is stopped (the trainer
# saves its checkpoint and exits).
launch_all() {
  trap 'stop_jobs; exit 143' TERM INT
  local config seed dir command left
  while IFS=$'\t' read -r config seed dir command; do
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
    left=$(time_left)
    (( left > 0 )) || break
    eval "set -- $command"   # back to the words that printf %q quoted
    launch "$config" "$seed" "$dir" "$left" env "$@" &
  done < "$FULL/planned.tsv"
  wait
}

# missing_data: why FASHION does not hold Fashion-MNIST (nothing when it does).
missing_data() {
  local name
  for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [[ ! -f $FASHION/$name && ! -f $FASHION/$name.gz ]]; then
      echo "FASHION_MNIST_DIR=$FASHION has no $name(.gz); set FASHION_MNIST_DIR to the folder of Fashion-MNIST's" \
        "four IDX files"
      return
    fi
  done
}

# count_outcomes AWK_CONDITION: the ended runs whose exit status ($3) meets the condition.
count_outcomes() { awk -F'\t' "$1" "$FULL/outcomes.tsv" 2>/dev/null | wc -l; }

full_budget() {
  local start=$SECONDS problem planned finished stopped failed code=0
  problem=$(missing_data)
  if [[ -n $problem ]]; then
    echo "$problem" > "$OUT/logs/full_budget.log"
    record "full-budget runs" 1 0 0 logs/full_budget.log "failed: $problem"
    return
  fi
  plan
  launch_all > "$OUT/logs/full_budget.log" 2>&1 &
  wait $!
  planned=$(wc -l < "$FULL/planned.tsv")
  finished=$(count_outcomes '$3 == 0')
  stopped=$(count_outcomes '$3 == 124 || $3 == 137')
  failed=$(count_outcomes '$3 != 0 && $3 != 124 && $3 != 137')
  (( finished == 0 || failed > 0 )) && code=1
  local not_started=$((planned - finished - stopped - failed))
  record "full-budget runs" "$code" $((SECONDS - start)) $((RUNS_END - START)) logs/full_budget.log \
    "$finished of $planned finished, $stopped stopped at the deadline, $failed failed, $not_started not started"
}

# mtl-train-report, installed or not.
REPORT_PY='import sys; from mtl_train.report import main; main(sys.argv[1:])'

# comparison: mtl_train.report over the runs that finished, Δm against the single-task baselines that finished; then
# full_budget.md.
comparison() {
  local -a dirs=() baselines=()
  [[ -d $FULL/stl ]] && dirs+=("$FULL/stl")
  [[ -d $FULL/methods ]] && dirs+=("$FULL/methods")
  [[ -n $(find "$FULL" -path '*/stl/seed*/baselines.json' 2>/dev/null) ]] && baselines=(--baselines "$FULL/stl")
  CAP=$((END - PACK_S))
  if [[ -z $(find "$FULL" -mindepth 2 -maxdepth 4 -path '*/seed*/summary.json' 2>/dev/null) ]]; then
    echo "no full-budget run finished" > "$OUT/logs/report.log"
    record report 1 0 0 logs/report.log "skipped: no run finished"
  else
    run_stage report "$REPORT_S" logs/report.log logs/report.log "$PY" -c "$REPORT_PY" "${dirs[@]}" \
      "${baselines[@]}" --out "$FULL/report"
  fi
  full_budget_markdown
}

full_budget_markdown() {
  "$PY" scripts/gpu_check_summary.py full-budget "$FULL" "$OUT/full_budget.md" --epochs "$EPOCHS" \
    --deadline-s $((RUNS_END - START))
}

# ---- summary and tarball -----------------------------------------------------------------------------------------

finish() {
  [[ -f $FULL/planned.tsv && ! -f $OUT/full_budget.md ]] && full_budget_markdown
  "$PY" scripts/gpu_check_summary.py summary "$OUT" || echo "gpu_check: the summary failed" >&2
  # written in WORK, outside what it packs, then moved
  if tar -czf "$WORK/gpu_check.tar.gz" --exclude='*.pt' --exclude=./work -C "$OUT" . -C "$WORK" full; then
    mv "$WORK/gpu_check.tar.gz" "$OUT/gpu_check.tar.gz"
  else
    echo "gpu_check: packing gpu_check.tar.gz failed" >&2
  fi
  echo "gpu_check: done in $(( $(date +%s) - START )) s; see $OUT/summary.md and $OUT/gpu_check.tar.gz"
}

# failed_stages: how many stages did not succeed.
failed_stages() { awk -F'\t' '$2 != 0' "$OUT/stages.tsv" 2>/dev/null | wc -l; }

on_signal() {
  trap - TERM INT
  echo "gpu_check: interrupted; stopping the stages, then the summary" >&2
  stop_jobs
  finish
  exit 130
}
trap on_signal TERM INT

# wanted STAGE: whether STAGES names it.
wanted() { [[ ,$STAGES, == *,$1,* ]]; }

echo "gpu_check: $MODE into $OUT (work: $WORK); the full-budget runs stop $((RUNS_END - START)) s after the start"
wanted env && environment
if wanted bench; then   # the targets first (k = 4), then k = 2 and 8; the data paths once
  bench fp32 none eager "$BENCH_K4_S" "${bench_k4[@]}" --graphs off --data-steps 20
  bench fp32 none graphs "$BENCH_K4_S" "${bench_k4[@]}" --graphs on --data-steps 0
  bench bf16 bf16 eager "$BENCH_K4_S" "${bench_k4[@]}" --graphs off --data-steps 0
  bench bf16 bf16 graphs "$BENCH_K4_S" "${bench_k4[@]}" --graphs on --data-steps 0
  bench fp32 none scaling "$BENCH_SCALING_S" "${bench_scaling[@]}" --graphs both --data-steps 0
  bench bf16 bf16 scaling "$BENCH_SCALING_S" "${bench_scaling[@]}" --graphs both --data-steps 0
fi
CAP=$RUNS_END
if wanted pytest; then
  (trap stop_jobs TERM INT; run_stage "pytest -m cuda" "$PYTEST_S" pytest_cuda.txt pytest_cuda.txt \
    "$PY" -u -m pytest -m cuda -q -p no:cacheprovider) &
fi
if wanted full; then
  full_budget
  wait
  comparison
fi
wait
finish
(( $(failed_stages) == 0 ))   # the exit status: 0 when every stage succeeded
