"""``import gpu_vgm`` and the CPU path work where CuPy and cudf cannot be imported (DESIGN.md:
nothing outside gpu_vgm/kernels.py and the GPU branch of backends.py imports them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCKED = ("cupy", "cudf", "dask_cudf", "dask_cuda", "rmm")

BLOCKER = """\
import os

with open(os.environ["GPU_VGM_BLOCKED_IMPORT_LOG"], "a", encoding="utf-8") as log:
    log.write(__name__ + "\\n")
raise ImportError(__name__ + " is made unimportable by tests/test_no_gpu_imports.py")
"""

SCRIPT = """\
import json
import os
import sys

BLOCKED = {blocked!r}
log_path = os.environ["GPU_VGM_BLOCKED_IMPORT_LOG"]

import gpu_vgm  # noqa: E402
import cpu_fallback  # noqa: E402

state = {{"after_import": sorted(m for m in BLOCKED if m in sys.modules)}}
with open(log_path, encoding="utf-8") as f:
    state["tried_on_import"] = f.read().split()

import numpy as np  # noqa: E402

rng = np.random.default_rng(0)
x = np.round(rng.lognormal(3.0, 1.0, 5000), 2)
x[::10] = 0.0
x[5] = np.nan
model = gpu_vgm.ScaleVGM(n_components=3, special_values=[0.0], learn_rounding=True)
model.fit(x)
z, comp = model.transform(x)
back = model.inverse_transform(z, comp)
state["roundtrip_exact"] = bool(np.array_equal(back, x, equal_nan=True))
state["z_type"] = type(z).__module__
state["cpu_fallback_encode"] = cpu_fallback.encode is not None
state["after_run"] = sorted(m for m in BLOCKED if m in sys.modules)
print(json.dumps(state))
"""


def test_cpu_path_never_imports_cupy_or_cudf(tmp_path):
    blockers = tmp_path / "blockers"
    for name in BLOCKED:
        (blockers / name).mkdir(parents=True)
        (blockers / name / "__init__.py").write_text(BLOCKER, encoding="utf-8")
    log = tmp_path / "blocked_imports.log"
    log.write_text("", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(blockers), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["GPU_VGM_BLOCKED_IMPORT_LOG"] = str(log)
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=BLOCKED)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads(res.stdout.strip().splitlines()[-1])
    assert state["after_import"] == [], state
    assert state["tried_on_import"] == [], f"import gpu_vgm tried to import {state}"
    assert state["roundtrip_exact"] and state["z_type"] == "numpy", state
    assert state["after_run"] == [], state
