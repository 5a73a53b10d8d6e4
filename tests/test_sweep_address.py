"""Which Ray ``optsweep run`` uses: ``--address``, then ``RAY_ADDRESS``, else a private local Ray
(token auth, per-user session files, loopback, clean worker ``PYTHONPATH``)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweep.cli import app
from sweep.cluster import ray_address, ray_address_problem

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parent / "sweep_models"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_address_comes_from_the_flag_then_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == (None, "a private local Ray")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert ray_address(None) == ("10.0.0.2:6379", "RAY_ADDRESS")
    assert ray_address("ray://h:10001") == ("ray://h:10001", "--address")


def test_address_problems_are_one_line_naming_the_source() -> None:
    port = _free_port()
    assert ray_address_problem(f"127.0.0.1:{port}", "--address") == (
        f"cannot reach the Ray cluster at 127.0.0.1:{port} (from --address): connection refused")
    assert ray_address_problem(f"ray://127.0.0.1:{port}", "RAY_ADDRESS") == (
        f"cannot reach the Ray cluster at ray://127.0.0.1:{port} (from RAY_ADDRESS): connection refused; "
        "unset RAY_ADDRESS for a private local Ray")
    assert ray_address_problem("http://h:8265", "--address") == (
        "Ray address 'http://h:8265' (from --address) is a dashboard (Jobs API) address: 'optsweep run' needs "
        "HOST:6379 or ray://HOST:10001, 'optsweep submit' takes http://")
    assert ray_address_problem("justahost", "RAY_ADDRESS") == (
        "Ray address 'justahost' (from RAY_ADDRESS) must be HOST:PORT, ray://HOST:PORT, auto or local; "
        "unset RAY_ADDRESS for a private local Ray")
    assert ray_address_problem("auto", "--address") is None


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: addr
        model: "tiny:model"
        example_inputs: "tiny:example_inputs"
        out: {tmp_path / "out"}
    """))
    return cfg


@pytest.mark.parametrize("via", ["--address", "RAY_ADDRESS"])
def test_run_with_an_unreachable_address_exits_2_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                via: str) -> None:
    addr = f"127.0.0.1:{_free_port()}"
    args = ["run", str(_config(tmp_path)), "--quiet"]
    if via == "--address":
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        args += ["--address", addr]
    else:
        monkeypatch.setenv("RAY_ADDRESS", addr)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    hint = "; unset RAY_ADDRESS for a private local Ray" if via == "RAY_ADDRESS" else ""
    assert r.stderr.strip() == f"error: cannot reach the Ray cluster at {addr} (from {via}): connection refused{hint}"
    assert not (tmp_path / "out").exists()


def test_worker_pythonpath_has_no_empty_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from sweep.executor import _worker_pythonpath

    monkeypatch.setenv("PYTHONPATH", ":/a::/b:/a:")
    assert _worker_pythonpath("/cfg") == "/cfg:/a:/b"
    monkeypatch.delenv("PYTHONPATH")
    assert _worker_pythonpath("/cfg") == "/cfg"


# -- one private local Ray for the rest of the module ------------------------------------------
@pytest.fixture(scope="module")
def private_ray() -> Iterator[str]:
    import ray

    from sweep.executor import init_ray

    if ray.is_initialized():
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_ADDRESS")}
    os.environ["PYTHONPATH"] = os.pathsep.join([*filter(None, [saved["PYTHONPATH"]]), ""])  # trailing ':'
    os.environ.pop("RAY_ADDRESS", None)
    try:
        init_ray(None, str(MODELS))
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.ray
def test_private_ray_is_private(private_ray: str) -> None:
    import ray

    from sweep.guard import private_root

    assert private_ray.startswith("127.0.0.1:")
    assert os.environ["RAY_AUTH_MODE"] == "token"
    session = ray._private.worker._global_node.get_session_dir_path()
    assert session.startswith(os.path.join(private_root(), "ray") + os.sep)
    st = os.stat(private_root())
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700

    @ray.remote
    def paths() -> tuple[str, list[str]]:
        return os.environ.get("PYTHONPATH", ""), sys.path

    pythonpath, sys_path = ray.get(paths.remote())
    assert pythonpath.split(os.pathsep)[0] == str(MODELS)
    assert "" not in pythonpath.split(os.pathsep)  # a trailing ':' would put the cwd on the path
    assert "" not in sys_path  # (Ray itself adds the driver's cwd, as documented; not an empty entry)


CONNECT = """
import json, ray
from sweep.executor import init_ray
res = init_ray(None, ".")
print(json.dumps([ray.get_runtime_context().gcs_address, res.get("CPU")]))
"""


@pytest.mark.ray
def test_ray_address_connects_without_num_cpus_and_needs_the_token(private_ray: str) -> None:
    env = {**os.environ, "RAY_ADDRESS": private_ray}  # as on a cluster node or in a KubeRay pod
    r = subprocess.run([sys.executable, "-c", CONNECT], env=env, capture_output=True, text=True, timeout=180,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    gcs, cpus = json.loads(r.stdout.strip().splitlines()[-1])
    assert gcs == private_ray and cpus == os.cpu_count()  # the same Ray, not a new one
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    no_token.update(RAY_AUTH_MODE="disabled", HOME=str(ROOT / "nonexistent-home"))
    probe = ("import ray, os\ntry:\n    ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False)\n"
             "except Exception as e:\n    print('refused', type(e).__name__)\nelse:\n    print('admitted')\n")
    r = subprocess.run([sys.executable, "-c", probe], env=no_token, capture_output=True, text=True, timeout=180)
    assert r.stdout.strip().splitlines()[-1].startswith("refused"), r.stdout + r.stderr[-1000:]
