"""The package as users get it: built with ``python -m build``, checked by ``twine``, installed from
its wheel into a fresh virtual environment (a real install, dependencies resolved by pip), and used
there from a folder that is not the checkout: import, start a process, read its output, serve the
dashboard page and a static file. An editable install hides packaging mistakes; this does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "flask_procman"
#: What a user's checkout holds but a build must never see (caches, venvs, local databases).
_IGNORE = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "instance",
                                 "artifacts", ".*_cache", ".hypothesis", "*.sqlite3*", "results")


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``cmd``; fail with its output when it fails. Returns stdout and stderr together."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{output}"
    return output


def _clean_env() -> dict[str, str]:
    """The environment without anything that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                            "PYTHONDONTWRITEBYTECODE")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _source_files() -> set[str]:
    """Every file of the package in the checkout (what the wheel must hold), as ``flask_procman/...``."""
    return {
        str(p.relative_to(REPO)) for p in (REPO / PACKAGE).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from a copy of the checkout with ``python -m build`` (which builds
    the wheel from the unpacked sdist, so the sdist must be complete)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_IGNORE)
    out = root / "dist"
    log = _run([sys.executable, "-m", "build", "--outdir", str(out), str(source)],
               cwd=root, env=_clean_env())
    warnings = [line for line in log.splitlines() if "warn" in line.lower() or "would be ignored" in line.lower()]
    assert not warnings, "the build must not warn:\n" + "\n".join(warnings)
    return out


def test_wheel_and_sdist_hold_every_file_and_pass_twine(dist: Path) -> None:
    wheel = next(dist.glob("*.whl"))
    sdist = next(dist.glob("*.tar.gz"))
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if n.startswith(PACKAGE + "/")}
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        in_sdist = {n.split("/", 1)[1] for n in tf.getnames()
                    if n.startswith(f"{top}/{PACKAGE}/") and tf.getmember(n).isfile()}
    expected = _source_files()
    assert {f"{PACKAGE}/py.typed", f"{PACKAGE}/engine/__init__.py",
            f"{PACKAGE}/dashboard/templates/procman/dashboard.html"} <= expected
    assert in_wheel == expected, f"missing {sorted(expected - in_wheel)}, extra {sorted(in_wheel - expected)}"
    assert in_sdist == expected, f"missing {sorted(expected - in_sdist)}, extra {sorted(in_sdist - expected)}"
    log = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))],
               cwd=dist, env=_clean_env())
    assert log.count("PASSED") == 2, log


_USER_SCRIPT = textwrap.dedent('''
    import json, os, sys, sysconfig, time
    import flask_procman
    from flask import Flask
    from flask_procman import ProcMan

    here = os.getcwd()
    app = Flask("user_app", instance_path=os.path.join(here, "instance"))
    app.config.update(PROCMAN_API_TOKEN="packaging-test-token-0123", PROCMAN_POLL_INTERVAL=0.1)
    procman = ProcMan(app)
    with app.app_context():
        assert procman.start_process("hello", [sys.executable, "-c", "print('hello from the wheel')"])
        deadline = time.monotonic() + 60
        while procman.get_process_status("hello")["status"] not in ("completed", "failed", "lost"):
            assert time.monotonic() < deadline, "the process did not end"
            time.sleep(0.05)
        status = procman.get_process_status("hello")
        output = procman.read_output("hello", "stdout", 0, 1024)[0].decode()
    client = app.test_client()
    page = client.get("/procman/")
    static = client.get("/procman/static/procman/dashboard.js")
    api = client.get("/procman/api/processes/hello", headers={"Authorization": "Bearer packaging-test-token-0123"})
    procman.shutdown(app)
    print(json.dumps({
        "file": flask_procman.__file__, "purelib": sysconfig.get_paths()["purelib"], "sys_path": sys.path,
        "status": status["status"], "return_code": status["return_code"], "output": output,
        "page": [page.status_code, page.get_data(as_text=True)[:2000]],
        "static": [static.status_code, len(static.get_data())],
        "api": [api.status_code, api.get_json()["status"]],
    }))
''')


def test_the_wheel_works_in_a_fresh_virtualenv(dist: Path, tmp_path: Path) -> None:
    wheel = next(dist.glob("*.whl"))
    venv = tmp_path / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    # A real install (dependencies resolved from the wheel's metadata), by this pip into that venv;
    # the pip cache keeps it fast.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(wheel)], cwd=tmp_path, env=env)
    work = tmp_path / "user"
    work.mkdir()
    (work / "user_app.py").write_text(_USER_SCRIPT)
    result = json.loads(_run([str(python), "user_app.py"], cwd=work, env=env, timeout=120).splitlines()[-1])
    assert Path(result["file"]).is_relative_to(result["purelib"]), result["file"]
    assert Path(result["purelib"]).is_relative_to(venv), result["purelib"]
    assert not any(Path(p).resolve() == REPO for p in result["sys_path"] if p), result["sys_path"]
    assert (result["status"], result["return_code"]) == ("completed", 0)
    assert result["output"] == "hello from the wheel\n"
    assert result["page"][0] == 200 and "dashboard.js" in result["page"][1], result["page"]
    assert result["static"][0] == 200 and result["static"][1] > 0
    assert result["api"] == [200, "completed"]
    # Installed as a package, not a link to the checkout.
    installed = Path(result["file"]).parent
    assert (installed / "py.typed").is_file() and (installed / "engine" / "__init__.py").is_file()
    assert not installed.is_symlink()
