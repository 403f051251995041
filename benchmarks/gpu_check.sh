#!/usr/bin/env bash
# One-shot GPU check, run from the repository root on a GPU host, sized for one device call of
# at most 8 minutes, install included:
#
#   bash benchmarks/gpu_check.sh OUTDIR [BUNDLE]      (BUNDLE: from benchmarks/gpu_bundle.sh)
#
# Installs what the host lacks from BUNDLE (offline), then, each step under its own timeout:
# the GPU tests (tests/gpu: kernel parity, the cudf and host-I/O pipelines); the kernel
# benchmark against a plain device copy; the pipeline at 100M rows, CPU backend on every core
# against the GPU backend on one GPU, with their parity (rows compared, rows that differ);
# then the same at 1B rows (ROWS_1B=0 skips it). Writes to OUTDIR: env.txt, gpu-tests.txt,
# gpu_kernels.json, pipeline-100m.json, pipeline-1b.json and summary.json (the device, exit
# codes, rows/s and parity), to be committed under benchmarks/results/. A failing step is
# recorded, not fatal.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR [BUNDLE]}
bundle=${2:-gpu-bundle}
mkdir -p "$out"
site=${GPU_VGM_SITE:-/tmp/gpu_vgm_site}
declare -A rc

{
  date -u; nvidia-smi -L; nproc; free -g | head -2; python3 --version
  python3 -c "import cupy; print('cupy', cupy.__version__)"
} >"$out/env.txt" 2>&1

if [[ -f $bundle/part01/install.sh ]]; then
  timeout 120 bash "$bundle/part01/install.sh" "$site" >>"$out/env.txt" 2>&1
  rc[install]=$?
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_CACHE_DIR=/tmp/gpu_vgm_numba CUPY_CACHE_DIR=/tmp/gpu_vgm_cupy
python3 -c "import dask, distributed, dask_cuda, gpu_vgm; print('dask', dask.__version__, \
'dask_cuda', dask_cuda.__version__)" >>"$out/env.txt" 2>&1
rc[imports]=$?
python3 -c "import cudf; print('cudf', cudf.__version__)" >>"$out/env.txt" 2>&1
rc[cudf]=$?

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/test_no_gpu_imports.py \
  >"$out/gpu-tests.txt" 2>&1
rc[gpu_tests]=$?
timeout 60 python3 benchmarks/gpu_kernels.py --rows 100000000 --json "$out/gpu_kernels.json" \
  >>"$out/env.txt" 2>&1
rc[gpu_kernels]=$?
pipeline() {  # ROWS NAME TIMEOUT
  timeout "$3" python3 benchmarks/pipeline.py --rows "$1" --workers "$(nproc)" --gpus 1 \
    --no-whole-job --no-original --repeat 1 --workdir "/tmp/gpu_vgm_bench_$2" \
    --json "$out/pipeline-$2.json" >>"$out/env.txt" 2>&1
}
pipeline 100000000 100m 90
rc[pipeline_100m]=$?
if [[ ${ROWS_1B:-1} != 0 ]]; then
  pipeline 1000000000 1b 200
  rc[pipeline_1b]=$?
fi

python3 - "$out" "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)" \
  "$(declare -p rc)" >"$out/summary.json" <<'EOF'
import json, os, re, sys
out, device, codes = sys.argv[1], sys.argv[2], sys.argv[3]
summary = {"device": device, "cpu_cores": os.cpu_count(),
           "exit_codes": {k: int(v) for k, v in re.findall(r'\[(\w+)\]="?(\d+)"?', codes)}}
for name in ("100m", "1b"):
    path = os.path.join(out, f"pipeline-{name}.json")
    if os.path.exists(path):
        r = json.load(open(path))
        summary[name] = {k: r.get(k) for k in ("rows", "seconds", "rows_per_s", "ratios",
                                               "cpu_gpu_parity")}
path = os.path.join(out, "gpu_kernels.json")
if os.path.exists(path):
    summary["kernels"] = json.load(open(path))["results"]
print(json.dumps(summary, indent=1))
EOF
cat "$out/summary.json"
