"""Faults and hostile input: killed workers and jobs, external clusters, odd Parquet files."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_vgm import generate, inverse, report, run
from gpu_vgm.backends import ArrowCPU
from gpu_vgm.cluster import cpu_layout, dask_client
from gpu_vgm.compare import compare
from gpu_vgm.encode_job import encode_job
from gpu_vgm.plan import EncodeOptions

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    assert (
        generate.main(
            [
                "--rows",
                "3000000",
                "--files",
                "2",
                "--row-group-size",
                "100000",
                "--output",
                str(root / "in"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        run.main(
            [
                "--input",
                str(root / "in"),
                "--output",
                str(root / "clean"),
                "--backend",
                "cpu",
                "--quiet",
                "--mode",
                "sample",
                "--partition-size",
                "100K",
            ]
        )
        == 0
    )
    return root


def _same(a, b):
    result = compare(a, b)
    return result["rows"] > 0 and not any(result["mismatches"].values())


class SlowCPU(ArrowCPU):
    def column(self, frame, name, source):
        time.sleep(0.15)  # long enough to kill a worker while parts are in flight
        return super().column(frame, name, source)


def test_worker_killed_mid_run_output_identical(data, tmp_path):
    opts = EncodeOptions(
        input=str(data / "in"),
        output=str(tmp_path / "out"),
        mode="sample",
        partition_size="100K",
        model_in=str(data / "clean" / "_model.json"),
    )
    with dask_client("cpu", workers=2) as client:
        before = set(client.run(os.getpid).values())
        # 2 cores are one worker process (cpu_layout): killing it loses every result it held,
        # the shared models included, and Dask must compute them again
        assert len(before) == 1
        job = {}
        thread = threading.Thread(
            target=lambda: job.update(manifest=encode_job(client, opts, backend=SlowCPU()))
        )
        thread.start()
        deadline = time.time() + 60
        while not list(Path(tmp_path).glob("out.tmp-*/part-*")) and time.time() < deadline:
            time.sleep(0.05)
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
        after = set(client.run(os.getpid).values())
    assert victim not in after  # the worker really died (its nanny started a new one)
    assert job["manifest"]["rows"] == 3_000_000
    assert _same(data / "clean", tmp_path / "out")


def _checkpointed_parts(out):
    for ckpt in Path(out).parent.glob(f"{Path(out).name}.tmp-*/_checkpoint.jsonl"):
        return max(len(ckpt.read_text().splitlines()) - 1, 0)
    return 0


def _run_cmd(inp, out):
    return [
        sys.executable,
        "-m",
        "gpu_vgm.run",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--backend",
        "cpu",
        "--workers",
        "1",
        "--mode",
        "sample",
        "--partition-size",
        "20K",
        "--quiet",
    ]


def _kill_midway(cmd, out):
    """Run ``cmd`` and SIGKILL it, with its workers, once 3 parts are checkpointed."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    while _checkpointed_parts(out) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()


def test_killed_job_leaves_no_output_and_resume_matches_clean_run(data, tmp_path):
    out = tmp_path / "out"
    cmd = _run_cmd(data / "in", out)
    _kill_midway(cmd, out)
    rerun = subprocess.run([*cmd[:-1], "--resume"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr and "parts already written" in rerun.stderr
    assert not list(tmp_path.glob("out.tmp-*"))
    # 20K partitions here, 100K in the clean run: the data must still be identical
    assert _same(data / "clean", out)


def _rewrite_header(out, **changes):
    """Change the checkpoint header a killed run left (as another machine or process would)."""
    (ckpt,) = Path(out).parent.glob(f"{Path(out).name}.tmp-*/_checkpoint.jsonl")
    lines = ckpt.read_text().splitlines()
    header = json.loads(lines[0])
    header.update(changes)
    ckpt.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")


def test_resume_never_adopts_parts_made_from_other_input_bytes(data, tmp_path):
    """A file rewritten with the same rows and row groups but other values: --resume must
    start over (the fingerprint holds sizes, times and footers), and the output decode to the
    new input. Before, it adopted the killed run's parts and model."""
    inp = tmp_path / "in"
    shutil.copytree(data / "in", inp)
    out = tmp_path / "out"
    cmd = _run_cmd(inp, out)
    _kill_midway(cmd, out)
    first = sorted(inp.glob("*.parquet"))[0]
    table = pq.read_table(first)
    amounts = table.column("Amount").to_numpy()
    changed = table.set_column(
        table.schema.get_field_index("Amount"), "Amount", pa.array(amounts[::-1].copy())
    )
    meta = pq.ParquetFile(first).metadata
    pq.write_table(changed, first, row_group_size=meta.row_group(0).num_rows)
    assert pq.ParquetFile(first).metadata.num_row_groups == meta.num_row_groups
    rerun = subprocess.run([*cmd[:-1], "--resume"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" not in rerun.stderr
    assert inverse.main(["--input", str(out), "--output", str(tmp_path / "back"), "-q"]) == 0
    result = compare(inp, tmp_path / "back", out / "_model.json")
    assert result["rows"] == 3_000_000 and not any(result["mismatches"].values()), result


def test_resume_adopts_a_leftover_whose_pid_is_ours_or_reused(data, tmp_path):
    """In a container every run is PID 1: the killed run's pid is the rerun's own. And a pid
    may be reused by an unrelated process. Neither means the killed run is alive."""
    out = tmp_path / "out"
    cmd = _run_cmd(data / "in", out)
    _kill_midway(cmd, out)
    _rewrite_header(out, pid=os.getpid())  # as if this process were the killed one's PID 1
    argv = cmd[cmd.index("--input") :]
    assert run.main([*argv[:-1], "--resume"]) == 0
    assert not list(tmp_path.glob("out.tmp-*"))  # adopted: no leftover remains
    assert _same(data / "clean", out)
    shutil.rmtree(out)
    _kill_midway(cmd, out)
    stranger = subprocess.Popen(["sleep", "60"])  # alive, but started after the killed run
    try:
        _rewrite_header(out, pid=stranger.pid)
        rerun = subprocess.run([*cmd[:-1], "--resume"], capture_output=True, text=True)
    finally:
        stranger.kill()
        stranger.wait()
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    assert _same(data / "clean", out)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_prefixes(dask_scheduler):
    return set(dask_scheduler.task_prefixes)


def test_external_scheduler_and_workers_give_the_local_output(data, tmp_path):
    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                address.rsplit(":", 1)[1],
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
            assert not {"fit_column", "encode_unit"} & client.run_on_scheduler(_task_prefixes)
            rc = run.main(
                [
                    "--input",
                    str(data / "in"),
                    "--output",
                    str(tmp_path / "out"),
                    "--quiet",
                    "--scheduler-address",
                    address,
                    "--mode",
                    "sample",
                ]
            )
            assert rc == 0
            # the external scheduler did the work (a local cluster would also have 2 workers);
            # the one column's fit may have run in run's own thread, which takes columns too
            assert "encode_unit" in client.run_on_scheduler(_task_prefixes)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["workers"] == 2
    assert _same(data / "clean", tmp_path / "out")


def test_local_cluster_binds_to_localhost():
    with dask_client("cpu", workers=1) as client:
        info = client.scheduler_info()
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])


def _warm_state():
    import sys

    kernel = getattr(sys.modules.get("cpu_fallback.kernels"), "_encode_argmax", None)
    return {
        "argmax_signatures": len(kernel.signatures) if kernel else 0,
        "sklearn": "sklearn" in sys.modules,
    }


def test_workers_of_a_local_cluster_warm_the_kernels_as_they_start():
    # 8 cores: two worker processes (cpu_layout), each warms itself
    with dask_client("cpu", workers=8, kernels_mode="argmax") as client:
        deadline = time.monotonic() + 60
        while True:
            states = list(client.run(_warm_state).values())
            if all(s["argmax_signatures"] == 2 for s in states) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    # both numba specializations (read-only and writable input), before any task ran
    assert [s["argmax_signatures"] for s in states] == [2, 2]
    assert not any(s["sklearn"] for s in states)
    with dask_client("cpu", workers=1) as client:  # no mode: nothing is loaded
        time.sleep(1)
        assert [s["argmax_signatures"] for s in client.run(_warm_state).values()] == [0]


def test_cpu_cores_become_threads_of_few_worker_processes():
    assert [cpu_layout(n) for n in (1, 2, 4, 5, 6, 8, 9, 10, 16)] == [
        (1, 1),
        (1, 2),
        (1, 4),
        (5, 1),  # a prime above 4: a process per core, never a thread more than cores
        (2, 3),
        (2, 4),
        (3, 3),
        (5, 2),
        (4, 4),
    ]
    for cores in range(1, 65):
        processes, threads = cpu_layout(cores)
        assert processes * threads == cores and threads <= 4
    with dask_client("cpu", workers=2) as client:
        assert list(client.nthreads().values()) == [2]


def _worker_processes():
    import psutil

    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "multiprocessing" in " ".join(p.cmdline()) and "resource_tracker" not in p.cmdline()
    ]


def test_cluster_started_in_background_is_closed_when_the_caller_fails_first():
    from gpu_vgm.cluster import dask_client_in_background

    before = {p.pid for p in _worker_processes()}
    with pytest.raises(ValueError, match="bad sample"):
        with dask_client_in_background("cpu", workers=2):
            raise ValueError("bad sample")  # connect() never called
    deadline = time.monotonic() + 30
    while {p.pid for p in _worker_processes()} - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not {p.pid for p in _worker_processes()} - before


# ----------------------------------------------------------------------------- hostile input
def _roundtrip(inp, tmp_path, *extra):
    enc, back = tmp_path / "enc", tmp_path / "back"
    assert (
        run.main(
            [
                "--input",
                str(inp),
                "--output",
                str(enc),
                "--backend",
                "cpu",
                "--quiet",
                "--workers",
                "1",
                *extra,
            ]
        )
        == 0
    )
    assert inverse.main(["--input", str(enc), "--output", str(back), "--quiet"]) == 0
    return pq.read_table(back)


def test_null_and_nan_in_a_float_column_come_back_apart(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    g = np.random.default_rng(4)
    x = np.rint(g.lognormal(3, 1, 30_000) * 100) / 100
    x[g.random(x.size) < 0.05] = np.nan
    nulls = g.random(x.size) < 0.05
    pq.write_table(pa.table({"Amount": pa.array(x, mask=nulls)}), inp / "a.parquet")
    back = _roundtrip(inp, tmp_path, "--learn-rounding")
    components = pq.read_table(tmp_path / "enc").column("Amount_component").to_numpy()
    nan = np.isnan(x) & ~nulls
    assert np.array_equal(components == -2, nulls) and np.array_equal(components == -1, nan)
    restored = back.column("Amount")
    assert np.array_equal(restored.is_null().to_numpy(zero_copy_only=False), nulls)
    values = restored.to_numpy(zero_copy_only=False)
    assert np.array_equal(np.isnan(values) & ~nulls, nan)
    assert np.array_equal(values[~nulls & ~nan], x[~nulls & ~nan])
    # and the report counts them apart, in one pass over the encoded data
    assert report.main(["--input", str(tmp_path / "enc"), "--output", str(tmp_path / "rep")]) == 0
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    used = summary["components"]["Amount"]
    assert (used["-2"], used["-1"]) == (nulls.sum(), nan.sum())
    assert sum(used.values()) == x.size
    assert summary["describe"]["Amount"]["missing"] == (nulls | nan).sum()
    assert summary["roundtrip"]["Amount"]["bit_exact"] == (~nulls & ~nan).sum()


def test_decimal_and_dictionary_columns_roundtrip(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    g = np.random.default_rng(1)
    cents = g.integers(0, 10**7, 20_000)
    decimals = pa.array([Decimal(int(c)).scaleb(-2) for c in cents], pa.decimal128(12, 2))
    levels = g.choice([0.5, 1.25, 99.75, -3.0], 20_000)
    table = pa.table({"price": decimals, "level": pa.array(levels).dictionary_encode()})
    pq.write_table(table, inp / "a.parquet")
    back = _roundtrip(inp, tmp_path, "--columns", "price,level", "--learn-rounding")
    assert back.column("price").type == pa.decimal128(12, 2)
    assert back.column("price").equals(table.column("price"))
    assert np.array_equal(back.column("level").to_numpy(), levels)


def test_schemas_that_differ_between_files_are_refused(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"Amount": [1.0, 2.0]}), inp / "a.parquet")
    pq.write_table(pa.table({"Amount": pa.array([1.0, 2.0], pa.float32())}), inp / "b.parquet")
    rc = run.main(["--input", str(inp), "--output", str(tmp_path / "out"), "--backend", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "b.parquet: column 'Amount' is float" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_truncated_file_in_the_middle_of_the_set(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a", "b", "c"):
        pq.write_table(pa.table({"Amount": np.arange(1000.0)}), inp / f"{name}.parquet")
    data = (inp / "b.parquet").read_bytes()
    (inp / "b.parquet").write_bytes(data[: len(data) - 10])
    rc = run.main(["--input", str(inp), "--output", str(tmp_path / "out"), "--backend", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "b.parquet" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "bad JSON"),
        ('{"format": "gpu_vgm.model", "version": 7, "columns": []}', "newer gpu_vgm"),
        (
            '{"format": "gpu_vgm.model", "version": 1, "columns": [{"format": "x"}]}',
            "format is 'x'",
        ),
        ('{"py/object": "os.system", "format": "gpu_vgm.model"}', "version must be an integer"),
    ],
)
def test_hostile_model_file_on_the_command_line(data, tmp_path, capsys, content, message):
    model = tmp_path / "m.json"
    model.write_text(content)
    rc = run.main(
        [
            "--input",
            str(data / "in"),
            "--output",
            str(tmp_path / "out"),
            "--backend",
            "cpu",
            "--model-in",
            str(model),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc != 0 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on loopback; the environment points boto at it (workers inherit it)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield s3fs.S3FileSystem()
    proc.terminate()
    proc.wait(timeout=30)
    s3fs.S3FileSystem.clear_instance_cache()


def test_object_storage_input_and_output_match_local(data, tmp_path, s3_server):
    fs = s3_server
    fs.mkdir("bucket")
    fs.put(str(data / "in") + "/", "bucket/in/", recursive=True)

    def encode(*extra):
        args = ["--input", "s3://bucket/in", "--output", "s3://bucket/out", "--backend", "cpu"]
        return run.main([*args, "--quiet", *extra])

    assert encode("--mode", "sample", "--workers", "2") == 0
    assert not [p for p in fs.ls("bucket") if ".tmp-" in p]  # the temporary prefix is gone
    assert fs.exists("bucket/out/_manifest.json")
    assert _same(data / "clean", "s3://bucket/out")
    assert (
        inverse.main(["--input", "s3://bucket/out", "--output", "s3://bucket/back", "--quiet"]) == 0
    )
    assert compare(data / "in", "s3://bucket/back", data / "clean" / "_model.json")[
        "mismatches"
    ] == {"Amount": 0}
    assert encode() != 0  # exists, no --overwrite


def test_a_model_in_an_object_store_is_read_like_a_path(data, tmp_path, s3_server):
    """--model-in s3://... crashed with a traceback (the checkpoint read it as a local path)."""
    s3_server.mkdir("bucket")
    s3_server.put(str(data / "clean" / "_model.json"), "bucket/model.json")
    argv = ["--input", str(data / "in"), "--output", str(tmp_path / "out"), "--backend", "cpu"]
    assert run.main([*argv, "--model-in", "s3://bucket/model.json", "--quiet"]) == 0
    assert _same(data / "clean", tmp_path / "out")
