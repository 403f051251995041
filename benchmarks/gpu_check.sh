#!/usr/bin/env bash
# One-shot GPU check, run from the repository root on a GPU host:
#
#   bash benchmarks/gpu_check.sh OUTDIR [BUNDLE]      (BUNDLE: from benchmarks/gpu_bundle.sh)
#
# Installs what the host lacks from BUNDLE (offline), then runs the GPU tests, the GPU and CPU
# kernel benchmarks and the pipeline benchmark (CPU and GPU backends side by side on this
# host), writing at most 6 files to OUTDIR: env.txt, gpu-tests.txt, gpu_kernels.json,
# cpu_kernels.json, pipeline.json, summary.json. ROWS (default 100000000) sizes the pipeline
# run; ROWS=1000000000 is the 1B-row check. A failing step is recorded, not fatal.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR [BUNDLE]}
bundle=${2:-gpu-bundle}
rows=${ROWS:-100000000}
mkdir -p "$out"
site=${GPU_VGM_SITE:-/tmp/gpu_vgm_site}
declare -A rc

{
  date -u; nvidia-smi -L; nproc; free -g | head -2; python3 --version
  python3 -c "import cupy; print('cupy', cupy.__version__)"
} >"$out/env.txt" 2>&1

if [[ -f $bundle/part01/install.sh ]]; then
  bash "$bundle/part01/install.sh" "$site" >>"$out/env.txt" 2>&1
  rc[install]=$?
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_CACHE_DIR=/tmp/gpu_vgm_numba CUPY_CACHE_DIR=/tmp/gpu_vgm_cupy
python3 -c "import dask, distributed, dask_cuda, gpu_vgm; print('dask', dask.__version__, \
'dask_cuda', dask_cuda.__version__)" >>"$out/env.txt" 2>&1
rc[imports]=$?

timeout 900 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/test_no_gpu_imports.py \
  >"$out/gpu-tests.txt" 2>&1
rc[gpu_tests]=$?
timeout 600 python3 benchmarks/gpu_kernels.py --rows 100000000 --json "$out/gpu_kernels.json" \
  >>"$out/env.txt" 2>&1
rc[gpu_kernels]=$?
timeout 600 python3 benchmarks/kernels.py --rows 10000000 --json "$out/cpu_kernels.json" \
  >>"$out/env.txt" 2>&1
rc[cpu_kernels]=$?
timeout 1500 python3 benchmarks/pipeline.py --rows "$rows" --workers "$(nproc)" --gpus 1 \
  --no-whole-job --workdir /tmp/gpu_vgm_bench --json "$out/pipeline.json" >>"$out/env.txt" 2>&1
rc[pipeline]=$?

{
  printf '{"device": "%s", "rows": %s, "exit_codes": {' \
    "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)" "$rows"
  sep=""
  for k in "${!rc[@]}"; do printf '%s"%s": %s' "$sep" "$k" "${rc[$k]}"; sep=", "; done
  printf '}}\n'
} >"$out/summary.json"
cat "$out/summary.json"
