"""The pages and JSON routes of the example, and who may read the procman API.

Every POST form is checked by Flask-WTF's ``CSRFProtect`` (set up in ``create_app``).
"""

from __future__ import annotations

import json
import math
import typing as t
import uuid

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy.orm import selectinload

from flask_procman.api import request_has_valid_token

from .models import EvaluateInfo, EvaluateStatusType, ModelInfo, db, list_datasets
from .service import STARTABLE, EvaluateService, EvaluationGone, EvaluationStartError, procman

bp = Blueprint("evaluations", __name__)

#: Longest ``--duration`` the form accepts, in seconds.
MAX_DURATION = 3600.0


# ------------------------------------------------------------------------------------ display ---
@bp.app_template_filter("progress_json")
def progress_json(process: t.Mapping[str, t.Any] | None) -> str:
    """The ``progress`` of a process status dict as JSON for a ``data-`` attribute ("null" for none)."""
    progress = (process or {}).get("progress")
    return json.dumps(procman.get_manager().status_to_json({"progress": progress})["progress"])


@bp.app_template_filter("duration")
def format_duration(seconds: float | None, live: bool = False) -> str:
    """``4.2 s``, ``3 min 07 s``, ``1 h 05 min`` (whole seconds while ``live``); "—" for None.

    ``static/example.js`` formats the live durations the same way.
    """
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if live and seconds < 60:
        return f"{int(seconds)} s"
    if not live and seconds < 59.95:  # what rounds to 60.0 is shown as a minute
        return f"{seconds:.1f} s"
    whole = int(seconds) if live else int(seconds + 0.5)  # half up, as Math.round in example.js
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


# ------------------------------------------------------------------------------------ access ----
@procman.authorize
def authorize_procman(action: str, process_id: str | None) -> bool:
    """The procman API: anyone may read the process of an existing evaluation (the evaluation pages
    are public in this demo and stream their log from it); everything else needs the bearer token."""
    if action == "read" and process_id is not None and _is_uuid(process_id) \
            and db.session.get(EvaluateInfo, process_id) is not None:
        return True
    return request_has_valid_token()


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# ------------------------------------------------------------------------------------ pages -----
def _evaluation_or_404(evaluation_id: uuid.UUID) -> EvaluateInfo:
    return db.get_or_404(EvaluateInfo, str(evaluation_id))


def _all_evaluations() -> list[tuple[EvaluateInfo, dict[str, t.Any] | None]]:
    """Every evaluation, newest first, with the status dict of its process (None if it has none)."""
    query = (
        sa.select(EvaluateInfo)
        .options(selectinload(EvaluateInfo.model))
        .order_by(EvaluateInfo.created_at.desc(), EvaluateInfo.uuid)
    )
    evaluations = list(db.session.scalars(query))
    processes = {p["id"]: p for p in EvaluateService.list_processes()} if evaluations else {}
    return [(evaluation, _process_of(evaluation, processes.get(evaluation.uuid))) for evaluation in evaluations]


def _process_of(evaluation: EvaluateInfo, process: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    # A NOT_STARTED evaluation (refused at the cap, maybe after a failed run) has no current process.
    return None if evaluation.status is EvaluateStatusType.NOT_STARTED else process


@bp.get("/")
def index() -> str:
    """Every evaluation, newest first."""
    return render_template("index.html", evaluations=_all_evaluations())


@bp.get("/evaluations/rows")
def evaluation_rows() -> str:
    """The list's rows alone (the page refreshes them with this; one template for both)."""
    return render_template("_evaluation_rows.html", evaluations=_all_evaluations())


@bp.get("/evaluations.json")
def evaluations_json() -> Response:
    """Every evaluation as a JSON list, newest first, each with its process's ``progress`` (or None)."""
    manager = procman.get_manager()
    return jsonify([{**evaluation.summary(process),
                     "progress": manager.status_to_json({"progress": (process or {}).get("progress")})["progress"]}
                    for evaluation, process in _all_evaluations()])


def _render_form(error: str | None = None, status: int = 200) -> tuple[str, int]:
    models = list(db.session.scalars(sa.select(ModelInfo).order_by(ModelInfo.name)))
    page = render_template("new.html", models=models, datasets=list_datasets(), error=error)
    return page, status


@bp.get("/evaluations/new")
def new_evaluation() -> tuple[str, int]:
    """The form that starts an evaluation."""
    return _render_form()


def _parse_duration(raw: str) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("The duration must be a number of seconds.") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_DURATION:
        raise ValueError(f"The duration must be between 0 and {MAX_DURATION:g} seconds.")
    return value


@bp.post("/evaluations")
def create_evaluation() -> t.Any:
    """Create an evaluation from the form and start it; redirect to its page (303)."""
    model = db.session.get(ModelInfo, request.form.get("model_uuid", ""))
    if model is None:
        return _render_form("Choose one of the models.", 400)
    dataset = request.form.get("dataset", "")
    if dataset not in list_datasets():
        return _render_form("Choose one of the datasets.", 400)
    try:
        duration = _parse_duration(request.form.get("duration", ""))
    except ValueError as exc:
        return _render_form(str(exc), 400)

    evaluation = EvaluateInfo(
        model_uuid=model.uuid,
        dataset=dataset,
        duration=duration,
        simulate_failure=request.form.get("fail") in ("1", "on", "true"),
    )
    db.session.add(evaluation)
    db.session.commit()
    try:
        EvaluateService.run_evaluate(evaluation.uuid)
    except EvaluationStartError as exc:
        flash(str(exc), "error")
    else:
        flash(f"Started evaluating {model.name} on {dataset}.", "success")
    return redirect(url_for("evaluations.show_evaluation", evaluation_id=evaluation.uuid), 303)


@bp.get("/evaluations/<uuid:evaluation_id>")
def show_evaluation(evaluation_id: uuid.UUID) -> str:
    """One evaluation: its status word, the live log of its process and its metrics."""
    evaluation = _evaluation_or_404(evaluation_id)
    has_process = evaluation.status is not EvaluateStatusType.NOT_STARTED
    api = "procman" in current_app.blueprints  # PROCMAN_API_ENABLED=False: no live log, the page still works
    return render_template(
        "evaluation.html",
        evaluation=evaluation,
        process=_process_of(evaluation, EvaluateService.process_status(evaluation.uuid)),
        startable=evaluation.evaluate_status in STARTABLE or EvaluateService.is_stuck(evaluation),
        events_url=url_for("procman.events", process_id=evaluation.uuid) if has_process and api else None,
        procman_stream_js=url_for("procman.static", filename="procman/stream.js") if api else None,
    )


@bp.get("/evaluations/<uuid:evaluation_id>.json")
def evaluation_json(evaluation_id: uuid.UUID) -> Response:
    """One evaluation as JSON: ``uuid, status, metrics, error, model, dataset, created_at,
    finished_at`` and ``process`` (the flask-procman status of its process, without output)."""
    evaluation = _evaluation_or_404(evaluation_id)
    data = evaluation.state()
    process = _process_of(evaluation, EvaluateService.process_status(evaluation.uuid))
    data["process"] = None if process is None else {
        "status": process["status"], "return_code": process["return_code"], "pid": process["pid"],
        "duration": process["duration"],
        "started_at": process["started_at"].isoformat() if process["started_at"] else None,
    }
    return jsonify(data)


@bp.post("/evaluations/<uuid:evaluation_id>/stop")
def stop_evaluation(evaluation_id: uuid.UUID) -> t.Any:
    """Stop a running evaluation through the manager (any worker can); it then becomes FAILED."""
    evaluation = _evaluation_or_404(evaluation_id)
    if evaluation.status is EvaluateStatusType.IN_PROGRESS and EvaluateService.stop_evaluate(evaluation.uuid):
        flash("The evaluation was stopped.", "success")
    else:
        flash("The evaluation is not running.", "error")
    return redirect(url_for("evaluations.show_evaluation", evaluation_id=evaluation.uuid), 303)


@bp.post("/evaluations/<uuid:evaluation_id>/retry")
def retry_evaluation(evaluation_id: uuid.UUID) -> t.Any:
    """Start a NOT_STARTED (refused at the cap) or FAILED evaluation again; back to its page (303)."""
    evaluation = _evaluation_or_404(evaluation_id)
    try:
        EvaluateService.run_evaluate(evaluation.uuid)
    except EvaluationGone as exc:
        flash(str(exc), "error")
        return redirect(url_for("evaluations.index"), 303)
    except EvaluationStartError as exc:
        flash(str(exc), "error")
    else:
        flash("Started the evaluation again.", "success")
    return redirect(url_for("evaluations.show_evaluation", evaluation_id=evaluation_id), 303)


@bp.post("/evaluations/<uuid:evaluation_id>/delete")
def delete_evaluation(evaluation_id: uuid.UUID) -> t.Any:
    """Delete an evaluation that is not running (its row, process record, log and outputs); to the list (303)."""
    evaluation = _evaluation_or_404(evaluation_id)
    label = f"{evaluation.model.name} on {evaluation.dataset}"
    if not EvaluateService.delete_evaluate(evaluation.uuid):
        flash("The evaluation is running: stop it before deleting it.", "error")
        return redirect(url_for("evaluations.show_evaluation", evaluation_id=evaluation.uuid), 303)
    flash(f"Deleted the evaluation of {label}.", "success")
    return redirect(url_for("evaluations.index"), 303)
