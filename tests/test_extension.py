"""Registration, configuration, per-app managers and the seed-compatible handle."""

from __future__ import annotations

import datetime as dt
import os
import threading
import typing as t
from pathlib import Path

import pytest
from conftest import AppFactory, present, py
from flask import Flask

from flask_procman import ConfigurationError, NotInitializedError, ProcessManager, ProcMan

# Made at import time, with no app, as the seed's EvaluateService._process_manager is.
seed_handle = ProcessManager()


def test_init_app_twice_says_what_to_do(make_app: AppFactory) -> None:
    app = make_app()
    with pytest.raises(RuntimeError, match=r"already been registered on this Flask app\. Import and use that instance"):
        ProcMan().init_app(app)


def test_outside_an_app_context_asks_about_init_app() -> None:
    with pytest.raises(NotInitializedError, match="did you call init_app"):
        ProcMan().start_process("x", ["true"])


def test_app_without_init_app(tmp_path: t.Any) -> None:
    app = Flask("bare", instance_path=str(tmp_path))
    with app.app_context(), pytest.raises(NotInitializedError, match="did you call init_app"):
        seed_handle.get_process_status("x")


def test_defaults_are_set_with_setdefault(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app()
    assert app.config["PROCMAN_MAX_PROCESSES"] == 5
    assert app.config["PROCMAN_OUTPUT_TAIL"] == 64 * 1024
    assert app.config["PROCMAN_STOP_ON_EXIT"] is True
    assert app.config["PROCMAN_RETENTION"] == dt.timedelta(days=7)
    settings = app.extensions["procman"].settings
    assert settings.database_uri.endswith(os.path.join("instance", "procman.sqlite3"))
    bare = Flask("b", instance_path=str(tmp_path / "other"))
    ProcMan(bare)
    assert bare.extensions["procman"].settings.log_dir == str(tmp_path / "other" / "procman")
    assert bare.config["PROCMAN_STOP_TIMEOUT"] == 10.0


def test_seed_max_processes_is_honoured(make_app: AppFactory) -> None:
    assert make_app(MAX_PROCESSES=3).extensions["procman"].settings.max_processes == 3


def test_prefixed_key_wins_over_seed_key(make_app: AppFactory) -> None:
    app = make_app(MAX_PROCESSES=3, PROCMAN_MAX_PROCESSES=7)
    assert app.extensions["procman"].settings.max_processes == 7


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PROCMAN_MAX_PROCESSES", -1),
        ("PROCMAN_MAX_PROCESSES", "5"),
        ("PROCMAN_MAX_PROCESSES", True),
        ("PROCMAN_MAX_PROCESSES", 2.5),
        ("PROCMAN_STOP_TIMEOUT", "ten"),
        ("PROCMAN_STOP_TIMEOUT", -1),
        ("PROCMAN_OUTPUT_TAIL", -5),
        ("PROCMAN_STOP_ON_EXIT", "yes"),
        ("PROCMAN_RETENTION", -3),
        ("PROCMAN_RETENTION", "7d"),
        ("PROCMAN_POLL_INTERVAL", 0),
        ("PROCMAN_API_PREFIX", "procman"),
        ("PROCMAN_API_TOKEN", "short"),
        ("PROCMAN_PROGRAMS", {"bad": {"cmd": "echo hi"}}),
    ],
)
def test_wrong_values_fail_at_init_app_naming_the_key(tmp_path: t.Any, key: str, value: object) -> None:
    app = Flask("cfg", instance_path=str(tmp_path))
    app.config[key] = value
    with pytest.raises(ConfigurationError) as info:
        ProcMan(app)
    assert (key in str(info.value)) or ("program" in str(info.value))
    assert "procman" not in app.extensions


def test_init_app_is_pure_setup(tmp_path: t.Any) -> None:
    """No thread, no database file, no log folder: init_app also runs in every CLI command."""
    threads_before = threading.active_count()
    app = Flask("pure", instance_path=str(tmp_path / "instance"))
    ProcMan(app)
    assert threading.active_count() == threads_before
    assert not (tmp_path / "instance").exists()
    manager = app.extensions["procman"]
    assert manager._store is None and manager._watcher is None


def test_engine_starts_on_first_use(make_app: AppFactory) -> None:
    app = make_app()
    manager = app.extensions["procman"]
    with app.app_context():
        assert manager._watcher is None
        seed_handle.start_process("first", py("pass"))
        assert manager._watcher is not None and manager._watcher.is_alive()


def test_two_apps_keep_separate_managers(make_app: AppFactory, tmp_path: t.Any) -> None:
    procman = ProcMan()
    one = make_app("one", procman=procman, PROCMAN_DATABASE_URI=f"sqlite:///{tmp_path}/one.db",
                   PROCMAN_LOG_DIR=str(tmp_path / "logs-one"), PROCMAN_MAX_PROCESSES=1)
    two = make_app("two", procman=procman, PROCMAN_DATABASE_URI=f"sqlite:///{tmp_path}/two.db",
                   PROCMAN_LOG_DIR=str(tmp_path / "logs-two"), PROCMAN_MAX_PROCESSES=1)
    assert one.extensions["procman"] is not two.extensions["procman"]
    with one.app_context():
        assert procman.start_process("p", py("import time; time.sleep(30)"))
        assert procman.get_manager() is one.extensions["procman"]
    with two.app_context():
        assert procman.get_process_status("p") is None  # not visible from the other app
        assert procman.start_process("p", py("print('two')"))  # its own cap, its own ids
        assert procman.wait("p", timeout=10)["stdout"] == "two\n"
    with one.app_context():
        assert present(procman.get_process_status("p"))["status"] == "running"
        assert procman.get_manager(two) is two.extensions["procman"]


def test_seed_example_runs_unchanged(make_app: AppFactory, tmp_path: t.Any) -> None:
    """The original note's example, with only its import line changed."""
    app = make_app()
    completed: list[tuple[str, int | None]] = []
    with app.app_context():
        process_manager = ProcessManager()

        def on_process_complete(process_id: str, return_code: int | None) -> None:
            completed.append((process_id, return_code))

        process_id = "unique_process_id"
        cmd = ["python", "-c", "import time; print('Hello'); time.sleep(5); print('Goodbye')"]
        working_dir = str(tmp_path)
        env_vars = {"PYTHONPATH": "/custom/python/path"}

        success = process_manager.start_process(
            process_id=process_id, cmd=cmd, cwd=working_dir, env=env_vars, on_complete=on_process_complete
        )
        assert success
        from conftest import wait_until

        status = wait_until(lambda: (s := process_manager.get_process_status(process_id)) and "Hello" in s["stdout"] and s,
                            message="Hello in stdout")
        assert status["status"] == "running"
        assert status["stdout"] == "Hello\n"
        assert process_manager.stop_process(process_id)
        assert present(process_manager.get_process_status(process_id))["status"] == "stopped"
        assert not process_manager.stop_process(process_id)
    wait_until(lambda: completed, message="callback")
    assert completed == [("unique_process_id", -15)]


def test_every_config_key_is_documented_in_readme() -> None:
    from flask_procman.config import DEFAULTS, ConfigKeys

    keys = {v for k, v in vars(ConfigKeys).items() if k.isupper()}
    assert keys == set(DEFAULTS)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [key for key in keys if f"`{key}`" not in readme]
    assert not missing, f"undocumented keys: {missing}"
