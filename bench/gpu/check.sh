#!/usr/bin/env bash
# The GPU check of issue 16: every number in one file, in one call of at most 10 minutes.
#
#   bash bench/gpu/check.sh                       # on the GPU machine: writes $OUT/gpu_check.json
#   bash bench/gpu/check.sh --device cpu --tiny   # dry run here (tiny sizes), runs/gpu_check/
#   options: --out DIR (default $OUT, else runs/gpu_check), --budget SECONDS (default 540),
#            --only fused,dpo_step (rerun some sections; install and env always run)
#
# Sections, each in its own process with its own time limit (cut to what is left of the
# budget); one that fails or times out is recorded with its output's tail and the rest go on:
#   install           the wheels carried in .whl/ (bench/gpu/fetch_wheels.sh) when imports fail
#   env               python, torch, CUDA device, versions of the packages used
#   gpu_tests         pytest -m gpu over the test files that have gpu tests
#   fused             bench/gpu/fused_check.py: fused adapter function vs separate ops
#   adapter_overhead  bench/adapter_overhead.py on a 1.1B Llama (c/a, c/b)
#   adapter_paths     bench/gpu/adapter_paths.py: the adapter's paths side by side, and a profile
#   adapter_compiled  the same through torch.compile's cudagraphs backend: without launch cost
#   dpo_step          bench/dpo_step.py on the same model: ours vs TRL + PEFT
#   fsdp              bench/gpu/fsdp_resume.py: FSDP steps, checkpoint, resume
#   fsdp2             the same with experiments/strategies/fsdp2.yaml (FSDP2Strategy)
# bench/gpu/README.md says what each number means and the targets.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
DEVICE=cuda
TINY=0
OUT_DIR="${OUT:-$ROOT/runs/gpu_check}"
BUDGET=540
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --only) ONLY=",$2,"; shift 2 ;;
    *) echo "check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
SECTIONS="$WORK/sections"
mkdir -p "$SECTIONS"
PY="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
SITE="$WORK/site"
WHEELS="${WHEEL_DIR:-$ROOT/.whl}"  # what bench/gpu/fetch_wheels.sh filled
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
export TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PANACEA_CACHE_DIR="$WORK/cache"
if [ -z "${PANACEA_DATA_DIR:-}" ]; then
  if [ -d "$ROOT/../shared/data" ]; then export PANACEA_DATA_DIR="$ROOT/../shared/data"
  elif [ -d "$WHEELS/data" ]; then export PANACEA_DATA_DIR="$WHEELS/data"; fi
fi
[ "$DEVICE" = cpu ] && export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" CUDA_VISIBLE_DEVICES=""
START=$(date +%s)
echo "gpu check: device $DEVICE, tiny $TINY, budget ${BUDGET}s, out $OUT_DIR, python $PY" | tee -a "$LOG"

# section NAME CAP_SECONDS COMMAND...: run it with a timeout, record rc / seconds / limit.
section() {
  local name="$1" cap="$2"; shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 5))
  local limit=$(( cap < left ? cap : left ))
  local t0; t0=$(date +%s%N)
  if [ -n "$ONLY" ] && [ "$name" != install ] && [ "$name" != env ] && [[ "$ONLY" != *",$name,"* ]]; then
    echo '{"rc": null, "seconds": 0, "limit_s": 0, "skipped": "not in --only"}' >"$SECTIONS/$name.meta.json"
    return
  fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  if [ "$limit" -lt 5 ]; then
    printf '{"rc": null, "seconds": 0, "limit_s": %d, "skipped": "no time left"}\n' "$limit" \
      >"$SECTIONS/$name.meta.json"
    echo "=== $name skipped: no time left" | tee -a "$LOG"
    return
  fi
  timeout -k 10 "$limit" "$@" >"$SECTIONS/$name.out" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local secs; secs=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
  printf '{"rc": %d, "seconds": %s, "limit_s": %d}\n' "$rc" "$secs" "$limit" \
    >"$SECTIONS/$name.meta.json"
  cat "$SECTIONS/$name.out" >>"$LOG"
  echo "=== $name: rc $rc in ${secs}s" | tee -a "$LOG"
}

# Install what is missing from the carried wheels (nothing when every import works).
NEEDED="import datasets, jsonargparse, omegaconf, moocore, trl, wandb, docstring_parser, typeshed_client"
if "$PY" -c "$NEEDED" >/dev/null 2>&1; then
  echo '{"rc": 0, "seconds": 0, "limit_s": 0, "skipped": "every import works"}' \
    >"$SECTIONS/install.meta.json"
elif ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  section install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH#"$ROOT/src"}"
else
  echo '{"rc": 1, "seconds": 0, "limit_s": 0, "skipped": "imports fail and no .whl/ (run bench/gpu/fetch_wheels.sh)"}' \
    >"$SECTIONS/install.meta.json"
fi

section env 30 "$PY" "$ROOT/bench/gpu/environment.py" --json "$SECTIONS/env.json"

GPU_TESTS=$(grep -l "mark.gpu" "$ROOT"/tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
section gpu_tests 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="--strict-markers -ra" \
  --junitxml="$SECTIONS/gpu_tests.xml" $GPU_TESTS

if [ "$TINY" = 1 ]; then
  FUSED=(--tiny)
  OVERHEAD=(--size tiny --batch 2 --seq 32 --steps 2 --repeats 1)
  DPO=(--size tiny --pairs 2 --prompt-len 8 --response-len 8 --rounds 1)
  PATHS=(--size tiny --shapes 2x16 --steps 1)
  COMPILED=(--size tiny --shapes 2x16 --steps 1 --compile aot_eager)
else
  FUSED=()
  OVERHEAD=(--size 1b --batch 8 --seq 512 --steps 10 --repeats 3)
  DPO=(--size 1b --pairs 8 --prompt-len 256 --response-len 256 --warmup 2 --rounds 5 --memory-steps 2)
  PATHS=(--size 1b --shapes 8x512 16x1024 --steps 8)
  COMPILED=(--size 1b --shapes 8x512 16x1024 --steps 8 --compile cudagraphs)
fi
section fused 60 "$PY" "$ROOT/bench/gpu/fused_check.py" --device "$DEVICE" ${FUSED[@]+"${FUSED[@]}"} \
  --json "$SECTIONS/fused.json"
section adapter_overhead 120 "$PY" "$ROOT/bench/adapter_overhead.py" --device "$DEVICE" \
  "${OVERHEAD[@]}" --skip-generation --json "$SECTIONS/adapter_overhead.json"
section adapter_paths 180 "$PY" "$ROOT/bench/gpu/adapter_paths.py" --device "$DEVICE" \
  "${PATHS[@]}" --json "$SECTIONS/adapter_paths.json"
section adapter_compiled 240 "$PY" "$ROOT/bench/gpu/adapter_paths.py" --device "$DEVICE" \
  "${COMPILED[@]}" --json "$SECTIONS/adapter_compiled.json"
section dpo_step 180 "$PY" "$ROOT/bench/dpo_step.py" --device "$DEVICE" "${DPO[@]}" \
  --json "$SECTIONS/dpo_step.json"
section fsdp 120 "$PY" "$ROOT/bench/gpu/fsdp_resume.py" --device "$DEVICE" \
  --root "$WORK/fsdp" --json "$SECTIONS/fsdp.json"
section fsdp2 90 "$PY" "$ROOT/bench/gpu/fsdp_resume.py" --device "$DEVICE" --fragment fsdp2.yaml \
  --root "$WORK/fsdp2" --json "$SECTIONS/fsdp2.json"

if ! "$PY" "$ROOT/bench/gpu/collect.py" "$SECTIONS" "$OUT_DIR/gpu_check.json" \
  --device "$DEVICE" --tiny "$TINY" --budget "$BUDGET" --elapsed "$(( $(date +%s) - START ))" \
  | tee -a "$LOG"; then
  # keep the raw section files where they come back, so that nothing is lost
  echo "collect.py failed: raw sections in $OUT_DIR/sections.tar.gz" | tee -a "$LOG"
  tar -czf "$OUT_DIR/sections.tar.gz" -C "$WORK" sections
fi
rm -rf "$WORK"
