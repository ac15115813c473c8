#!/usr/bin/env bash
# The GPU acceptance check as one command, for a bare GPU machine with no network (see bench/gpu_check.py):
#   bash bench/gpu_check.sh [gpu_check.py options]      figures in $OUT/gpu_check.json (OUT defaults to gpu_check_out)
# Installs what that machine lacks from .gpu/wheels (make wheelhouse), joins the SmolLM2 GGUF from its parts when
# all of them are there (make gpu-bundle), then runs the stages. On a machine without CUDA it runs the dry run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
# a graph torch.compile cannot build on this machine runs eager, with the compiler's error in the log, instead of
# failing the stage: the speed figures then show what compiling would have gained was not had
export TORCHDYNAMO_SUPPRESS_ERRORS=${TORCHDYNAMO_SUPPRESS_ERRORS:-1}
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
  if ! ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    echo "hydra-core and omegaconf are missing and .gpu/wheels is empty: run 'make wheelhouse' where pip works"
    exit 2
  fi
  site=${SLM_SWEEP_SITE:-/tmp/slm_sweep_site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpu/wheels/*.whl || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed from .gpu/wheels: $(ls .gpu/wheels | tr '\n' ' ')"
fi
if [ -d .gpu/gguf ]; then
  "$PYTHON" bench/gpu_bundle.py join || echo "(no joined GGUF: the check's first line says which weights it runs on)"
fi
"$PYTHON" bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
