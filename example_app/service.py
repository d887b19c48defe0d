"""The evaluation service of the design note, made to run: start ``scripts/evaluate.py``, record the end.

``EvaluateService`` keeps the seed's shape: a class-level ``ProcessManager()`` handle, and
``run_evaluate(evaluate_uuid)`` that builds the command, marks the row IN_PROGRESS, calls
``start_process(evaluate_uuid, cmd, work_dir, env, cls._on_process_complete)`` and puts the row
back to NOT_STARTED (and raises) when the process cannot start.

What the seed could not do with an in-memory callback is done by the durable handler
``finish_evaluation`` (``@procman.on_complete("evaluate")``): it runs once in the whole deployment,
in whichever gunicorn worker (or CLI) records the end, even when the worker that started the
evaluation has been recycled meanwhile.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import sys
import typing as t

import sqlalchemy as sa
from flask import current_app

from flask_procman import ProcessManager, ProcessNotFinished, ProcMan
from flask_procman.store import FINAL, utcnow

from .models import DATA_DIR, EvaluateInfo, EvaluateStatusType, ModelInfo, db

log = logging.getLogger(__name__)

#: The folder of this package (the ``evaluate`` program runs there).
APP_DIR = os.path.dirname(os.path.abspath(__file__))
#: The program every evaluation runs.
SCRIPT_PATH = os.path.join(APP_DIR, "scripts", "evaluate.py")
#: The durable completion handler's name, given to every start.
HANDLER = "evaluate"

#: The extension; its ``procman_processes`` table is part of ``db.metadata``, so it lives in the
#: app's database and ``db.create_all()`` creates it with the app's own tables.
procman = ProcMan(db=db)

# The dashboard and ``flask procman run evaluate -- --model ... --data ... --output-dir ...`` may
# start the script too (such runs have no evaluation row: they only show in the dashboard).
procman.register_program("evaluate", [sys.executable, SCRIPT_PATH], cwd=APP_DIR, allow_args=True)


class EvaluationStartError(RuntimeError):
    """The evaluation could not be started; the row is back to NOT_STARTED with the reason in ``error``
    (or, when it was already running or completed, untouched)."""


class EvaluationGone(EvaluationStartError):
    """The evaluation was deleted while it was being started (a Delete racing a Retry)."""


#: The statuses an evaluation may be (re)started from.
STARTABLE = (EvaluateStatusType.NOT_STARTED.value, EvaluateStatusType.FAILED.value)
#: How long an IN_PROGRESS claim may go without its process record before Retry and Delete treat
#: it as stuck (its starter crashed between the claim and the start): far longer than a start takes.
CLAIM_GRACE = dt.timedelta(seconds=30)


class EvaluateService:
    """Start, stop and finish evaluations (all methods need an app context)."""

    # The seed's handle: made at import time, it acts on current_app's manager on each call.
    _process_manager = ProcessManager()

    @staticmethod
    def output_dir(evaluate_uuid: str) -> str:
        """``<instance>/outputs/<uuid>``: the script's working directory and where metrics.json goes."""
        return os.path.join(current_app.config["EVALUATION_OUTPUT_DIR"], evaluate_uuid)

    @classmethod
    def build_command(cls, evaluate: EvaluateInfo, model: ModelInfo) -> list[str]:
        """The argv of one evaluation (a list: no shell is ever involved)."""
        cmd = [
            sys.executable, SCRIPT_PATH,
            "--model", model.algorithm,
            "--data", os.path.join(DATA_DIR, evaluate.dataset),
            "--output-dir", cls.output_dir(evaluate.uuid),
        ]
        if evaluate.duration is not None:
            cmd += ["--duration", repr(float(evaluate.duration))]
        if evaluate.simulate_failure:
            cmd.append("--fail")
        return cmd

    @classmethod
    def run_evaluate(cls, evaluate_uuid: str) -> dict[str, str]:
        """Start the evaluation ``evaluate_uuid`` (its uuid is also the process id): a new one, one
        refused at the cap (NOT_STARTED) or a FAILED one (a retry).

        :raises EvaluationStartError: the cap of running processes is reached (or the start failed):
            the row is NOT_STARTED again; or it is already IN_PROGRESS or COMPLETED: the row is untouched.
        """
        evaluate = db.get_or_404(EvaluateInfo, evaluate_uuid)
        model = db.session.get(ModelInfo, evaluate.model_uuid)
        if model is None:
            raise EvaluationStartError(f"The model of evaluation {evaluate_uuid} no longer exists.")

        # Mark it IN_PROGRESS before starting, so that the completion handler (which may run in
        # another worker as soon as the process ends) always finds a row to finish. A compare-and-set:
        # of two retries at once (two workers, a double click), only one starts the process; the
        # other must not put the running evaluation back to NOT_STARTED.
        # A stuck IN_PROGRESS row (see is_stuck) is claimed like a startable one, by its claim time.
        claimed = db.session.execute(
            sa.update(EvaluateInfo)
            .where(EvaluateInfo.uuid == evaluate_uuid, cls._claimable(evaluate))
            .values(evaluate_status=EvaluateStatusType.IN_PROGRESS.value, metrics=None, error=None,
                    finished_at=None, claimed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            current = db.session.get(EvaluateInfo, evaluate_uuid, populate_existing=True)
            if current is None:  # deleted meanwhile (a Delete racing this Retry)
                raise EvaluationGone("The evaluation no longer exists: it was deleted meanwhile.")
            raise EvaluationStartError(f"The evaluation is {current.evaluate_status}: it cannot be started again.")
        db.session.refresh(evaluate)

        cmd = cls.build_command(evaluate, model)
        work_dir = cls.output_dir(evaluate_uuid)
        os.makedirs(work_dir, exist_ok=True)
        stale = os.path.join(work_dir, "metrics.json")
        if os.path.exists(stale):  # a retried evaluation must not pick up an earlier run's metrics
            os.remove(stale)
        env = {"EVALUATION_UUID": evaluate_uuid}

        try:
            started = cls._process_manager.start_process(
                evaluate_uuid,
                cmd,
                work_dir,
                env,
                cls._on_process_complete,
                handler=HANDLER,
                timeout=current_app.config["EVALUATION_TIMEOUT"],
                # One log file in the order the script wrote it: the page shows it live and again
                # after a reload, identically (two files cannot say how their lines interleaved).
                merge_stderr=True,
                metadata={"evaluation": evaluate_uuid, "model": model.name, "dataset": evaluate.dataset},
            )
        except Exception as exc:
            cls._restore_not_started(evaluate, f"Could not start the evaluation: {exc}")
            raise EvaluationStartError(f"Could not start the evaluation: {exc}") from exc
        if started:
            return {"message": "The evaluation has started."}
        cap = current_app.config.get("PROCMAN_MAX_PROCESSES")
        message = f"Could not start the evaluation: {cap} evaluations are already running. Try again later."
        cls._restore_not_started(evaluate, message)
        raise EvaluationStartError(message)

    @classmethod
    def is_stuck(cls, evaluate: EvaluateInfo) -> bool:
        """Whether an IN_PROGRESS evaluation can never leave it by itself: its process (started
        since the claim) has ended and its completion handler is done, or no process was started
        within ``CLAIM_GRACE`` of the claim (the starter crashed, or the database failed it and the
        row could not be put back)."""
        if evaluate.status is not EvaluateStatusType.IN_PROGRESS:
            return False
        record = procman.get_manager().store.get(evaluate.uuid)
        claimed = evaluate.claimed_at
        if record is not None and (claimed is None or record["created_at"] >= claimed):  # this claim's run
            return record["status"] in FINAL and record["handler_state"] != "pending"
        return claimed is None or utcnow() - claimed > CLAIM_GRACE  # an earlier run's record, or none

    @classmethod
    def _claimable(cls, evaluate: EvaluateInfo) -> sa.ColumnElement[bool]:
        """The compare-and-set condition of a claim or a delete, from the row as read: a startable
        status, or the same stuck claim (so that of two at once, one wins)."""
        startable = EvaluateInfo.evaluate_status.in_(STARTABLE)
        if not cls.is_stuck(evaluate):
            return startable
        same_claim = (EvaluateInfo.claimed_at.is_(None) if evaluate.claimed_at is None
                      else EvaluateInfo.claimed_at == evaluate.claimed_at)
        return sa.or_(startable, sa.and_(EvaluateInfo.evaluate_status == EvaluateStatusType.IN_PROGRESS.value,
                                         same_claim))

    @staticmethod
    def _restore_not_started(evaluate: EvaluateInfo, message: str) -> None:
        evaluate.evaluate_status = EvaluateStatusType.NOT_STARTED.value
        evaluate.error = message
        db.session.commit()

    @classmethod
    def stop_evaluate(cls, evaluate_uuid: str) -> bool:
        """Stop a running evaluation (from any worker); True if it was running and has now ended.

        The row becomes FAILED through the completion handler, like any other end.
        """
        return cls._process_manager.stop_process(evaluate_uuid)

    @classmethod
    def delete_evaluate(cls, evaluate_uuid: str) -> bool:
        """Delete an evaluation that is not running: its row, its process record and log, its outputs.

        False when it is IN_PROGRESS (stop it first; unless it is stuck, see is_stuck) or unknown.
        The row goes first, by a conditional delete, so that a retry racing with it finds no row
        instead of a half-deleted one.
        """
        evaluate = db.session.get(EvaluateInfo, evaluate_uuid)
        if evaluate is None:
            return False
        condition = (cls._claimable(evaluate) if evaluate.status is EvaluateStatusType.IN_PROGRESS
                     else EvaluateInfo.evaluate_status != EvaluateStatusType.IN_PROGRESS.value)
        deleted = db.session.execute(
            sa.delete(EvaluateInfo)
            .where(EvaluateInfo.uuid == evaluate_uuid, condition)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        if deleted.rowcount != 1:  # type: ignore[attr-defined]
            return False
        try:
            cls._process_manager.remove_process(evaluate_uuid)  # False when it never had a process
        except ProcessNotFinished:  # cannot happen while the row was not IN_PROGRESS; left to the operator
            log.warning("evaluation %s was deleted but its process still runs", evaluate_uuid)
        shutil.rmtree(cls.output_dir(evaluate_uuid), ignore_errors=True)
        return True

    @classmethod
    def process_status(cls, evaluate_uuid: str) -> dict[str, t.Any] | None:
        """The flask-procman status of the evaluation's process (None before it ever started)."""
        return cls._process_manager.get_process_status(evaluate_uuid)

    @classmethod
    def list_processes(cls) -> list[dict[str, t.Any]]:
        """The status dicts of every process (without output), newest first: one query for a list page."""
        return cls._process_manager.list_processes()

    @staticmethod
    def _on_process_complete(process_id: str, return_code: int | None) -> None:
        """The seed's in-memory callback: runs only in the worker that started the process, and not
        at all if that worker is gone by then. Hence it only logs; ``finish_evaluation`` does the work."""
        log.info("evaluation %s ended with return code %s", process_id, return_code)

    @classmethod
    def finish_evaluate(cls, evaluate_uuid: str, return_code: int | None) -> None:
        """Record the end of an evaluation: COMPLETED with its metrics, or FAILED with the reason."""
        evaluate = db.session.get(EvaluateInfo, evaluate_uuid)
        if evaluate is None:
            log.warning("evaluation %s ended but has no row (deleted?)", evaluate_uuid)
            return
        if evaluate.status.is_final:  # already recorded (a handler re-run after a crash)
            return
        process = cls.process_status(evaluate_uuid)
        state = process["status"] if process is not None else "lost"
        if state == "completed" and return_code == 0:
            try:
                with open(os.path.join(cls.output_dir(evaluate_uuid), "metrics.json"), encoding="utf-8") as f:
                    metrics = json.load(f)
                if not isinstance(metrics, dict):
                    raise TypeError("metrics.json does not hold a JSON object")
            except (OSError, ValueError, TypeError) as exc:
                evaluate.evaluate_status = EvaluateStatusType.FAILED.value
                evaluate.error = f"The script exited with status 0 but its metrics could not be read: {exc}"
            else:
                evaluate.evaluate_status = EvaluateStatusType.COMPLETED.value
                evaluate.metrics = metrics
                evaluate.error = None
        else:
            evaluate.evaluate_status = EvaluateStatusType.FAILED.value
            evaluate.error = describe_failure(state, return_code, process)
        evaluate.finished_at = utcnow()
        db.session.commit()


def describe_failure(state: str, return_code: int | None, process: t.Mapping[str, t.Any] | None) -> str:
    """The text stored in ``EvaluateInfo.error``: how the process ended, then what it said on stderr."""
    code = f" (exit status {return_code})" if return_code is not None else ""
    if state == "stopped":
        headline = f"The evaluation was stopped before it finished{code}."
    elif state == "timed_out":
        limit = process.get("timeout") if process else None
        headline = f"The evaluation was stopped after its time limit of {limit:g} s{code}." if limit \
            else f"The evaluation was stopped after its time limit{code}."
    elif state == "lost":
        headline = "The evaluation process was lost: it ended while no manager was watching it."
    elif state == "failed":
        headline = "The evaluation process could not be started."
    else:
        headline = f"The evaluation script failed{code}."
    said = (process or {}).get("error") or ""  # a failed script: the end of its log
    if state in ("stopped", "timed_out"):
        said = (process or {}).get("stdout") or ""  # procman's error only says why; the log says the rest
    detail = _last_words(said)
    return f"{headline}\n\n{detail}" if detail else headline


def _last_words(tail: str, lines: int = 6) -> str:
    """What the script said last, from the end of its log (stdout and stderr are one file): from its
    last traceback on, else its last few lines. The whole log is on the page anyway."""
    start = tail.rfind("Traceback (most recent call last):")
    if start != -1:
        return tail[start:].strip()
    return "\n".join(tail.strip().splitlines()[-lines:])


@procman.on_complete(HANDLER)
def finish_evaluation(process_id: str, return_code: int | None) -> None:
    """The durable completion handler: runs once per evaluation, with the app context pushed."""
    EvaluateService.finish_evaluate(process_id, return_code)
