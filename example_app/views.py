"""The pages and JSON routes of the example, its CSRF check, and who may read the procman API."""

from __future__ import annotations

import hmac
import math
import secrets
import typing as t
import uuid

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy.orm import selectinload

from flask_procman.api import request_has_valid_token

from .models import EvaluateInfo, EvaluateStatusType, ModelInfo, db, list_datasets
from .service import EvaluateService, EvaluationStartError, procman

bp = Blueprint("evaluations", __name__)

#: Longest ``--duration`` the form accepts, in seconds.
MAX_DURATION = 3600.0


# ------------------------------------------------------------------------------------ CSRF ------
def csrf_token() -> str:
    """This browser session's CSRF token (made on first use; the session cookie is signed)."""
    token = session.get("csrf_token")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf_token"] = token
    return token


def check_csrf() -> None:
    """Refuse a form whose ``csrf_token`` field is not this session's token (400)."""
    expected = session.get("csrf_token")
    given = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(400, description="The form's CSRF token is missing or out of date: reload the page and try again.")


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


def _all_evaluations() -> list[EvaluateInfo]:
    query = (
        sa.select(EvaluateInfo)
        .options(selectinload(EvaluateInfo.model))
        .order_by(EvaluateInfo.created_at.desc(), EvaluateInfo.uuid)
    )
    return list(db.session.scalars(query))


@bp.get("/")
def index() -> str:
    """Every evaluation, newest first."""
    return render_template("index.html", evaluations=_all_evaluations())


@bp.get("/evaluations.json")
def evaluations_json() -> Response:
    """Every evaluation as a JSON list, newest first, each with its process's ``progress`` (or None)."""
    manager = procman.get_manager()
    progress = {p["id"]: p["progress"] for p in procman.list_processes()}
    return jsonify([{**evaluation.summary(),
                     "progress": manager.status_to_json({"progress": progress.get(evaluation.uuid)})["progress"]}
                    for evaluation in _all_evaluations()])


def _render_form(error: str | None = None, status: int = 200) -> tuple[str, int]:
    models = list(db.session.scalars(sa.select(ModelInfo).order_by(ModelInfo.name)))
    page = render_template("new.html", models=models, datasets=list_datasets(), csrf_token=csrf_token(), error=error)
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
    check_csrf()
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
    return render_template(
        "evaluation.html",
        evaluation=evaluation,
        events_url=url_for("procman.events", process_id=evaluation.uuid) if has_process else None,
        procman_stream_js=url_for("procman.static", filename="procman/stream.js"),
        csrf_token=csrf_token(),
    )


@bp.get("/evaluations/<uuid:evaluation_id>.json")
def evaluation_json(evaluation_id: uuid.UUID) -> Response:
    """One evaluation as JSON: ``uuid, status, metrics, error, model, dataset, created_at,
    finished_at`` and ``process`` (the flask-procman status of its process, without output)."""
    evaluation = _evaluation_or_404(evaluation_id)
    data = evaluation.state()
    process = EvaluateService.process_status(evaluation.uuid)
    data["process"] = None if process is None else {
        "status": process["status"], "return_code": process["return_code"], "pid": process["pid"],
        "duration": process["duration"],
    }
    return jsonify(data)


@bp.post("/evaluations/<uuid:evaluation_id>/stop")
def stop_evaluation(evaluation_id: uuid.UUID) -> t.Any:
    """Stop a running evaluation through the manager (any worker can); it then becomes FAILED."""
    check_csrf()
    evaluation = _evaluation_or_404(evaluation_id)
    if evaluation.status is EvaluateStatusType.IN_PROGRESS and EvaluateService.stop_evaluate(evaluation.uuid):
        flash("The evaluation was stopped.", "success")
    else:
        flash("The evaluation is not running.", "error")
    return redirect(url_for("evaluations.show_evaluation", evaluation_id=evaluation.uuid), 303)
