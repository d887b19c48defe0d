"""The example service's own tables: the models it knows and the evaluations it has run.

``db`` is the app's Flask-SQLAlchemy extension; flask-procman can keep its process records in
the same database by being given this ``db``.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import typing as t
import uuid

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from flask_procman.store import UTCDateTime, utcnow

#: The classifiers ``scripts/evaluate.py --model`` accepts.
ALGORITHMS = ("threshold", "majority", "nearest-centroid")

#: Where the datasets live; ``EvaluateInfo.dataset`` is a file name in this folder.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def new_uuid() -> str:
    return str(uuid.uuid4())


class EvaluateStatusType(str, enum.Enum):
    """Where an evaluation stands; stored as the bare word in ``EvaluateInfo.evaluate_status``."""

    NOT_STARTED = "NOT_STARTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in (EvaluateStatusType.COMPLETED, EvaluateStatusType.FAILED)


class ModelInfo(db.Model):  # type: ignore[name-defined,misc]
    """A model that can be evaluated: a name for one of the script's algorithms."""

    __tablename__ = "model_info"

    uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    algorithm: Mapped[str] = mapped_column(sa.String(32))  # one of ALGORITHMS
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    evaluations: Mapped[list[EvaluateInfo]] = relationship(back_populates="model")

    def __repr__(self) -> str:
        return f"<ModelInfo {self.name!r} ({self.algorithm})>"


class EvaluateInfo(db.Model):  # type: ignore[name-defined,misc]
    """One evaluation of a model on a dataset; its uuid is also the flask-procman process id."""

    __tablename__ = "evaluate_info"

    uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_uuid)
    model_uuid: Mapped[str] = mapped_column(sa.ForeignKey("model_info.uuid"), index=True)
    dataset: Mapped[str] = mapped_column(sa.String(255))  # a file name in DATA_DIR
    #: Seconds the script spreads its work over (``--duration``); None: the script's default (10).
    duration: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    #: Ask the script to fail halfway (``--fail``): the demo's way to see a FAILED evaluation.
    simulate_failure: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    evaluate_status: Mapped[str] = mapped_column(
        sa.String(16), default=EvaluateStatusType.NOT_STARTED.value, index=True
    )
    metrics: Mapped[dict[str, t.Any] | None] = mapped_column(sa.JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the last start claimed the row (made it IN_PROGRESS): how long a claim without a
    #: process has been so (see ``EvaluateService.is_stuck``).
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    model: Mapped[ModelInfo] = relationship(back_populates="evaluations")

    @property
    def status(self) -> EvaluateStatusType:
        return EvaluateStatusType(self.evaluate_status)

    def summary(self, process: t.Mapping[str, t.Any] | None = None) -> dict[str, t.Any]:
        """The row as ``GET /evaluations.json`` lists it; ``process``: its flask-procman status dict,
        for ``started_at`` and ``duration`` (seconds so far while it runs; None before it ever ran,
        or once its process record was pruned)."""
        started = process.get("started_at") if process else None
        return {
            "uuid": self.uuid,
            "model": self.model.name,
            "dataset": self.dataset,
            "status": self.evaluate_status,
            "created_at": self.created_at.isoformat(),
            "started_at": started.isoformat() if started else None,
            "duration": process.get("duration") if process else None,
        }

    def state(self) -> dict[str, t.Any]:
        """The row as ``GET /evaluations/<uuid>.json`` shows it."""
        return {
            "uuid": self.uuid,
            "status": self.evaluate_status,
            "metrics": self.metrics,
            "error": self.error,
            "model": self.model.name,
            "dataset": self.dataset,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }

    def __repr__(self) -> str:
        return f"<EvaluateInfo {self.uuid} {self.evaluate_status}>"


def list_datasets() -> list[str]:
    """The CSV file names in ``DATA_DIR``, sorted."""
    return sorted(name for name in os.listdir(DATA_DIR) if name.endswith(".csv"))


SEED_MODELS = (
    ("baseline-majority", "majority", "Always predicts the most common label: the floor to beat."),
    ("mean-threshold", "threshold", "Predicts positive when the mean of the features is above 0."),
    ("centroid-v1", "nearest-centroid", "Predicts the class whose centroid is nearest."),
)


def seed_models() -> int:
    """Insert the three example models if there are none yet; returns how many were added."""
    if db.session.scalar(sa.select(sa.func.count()).select_from(ModelInfo)):
        return 0
    db.session.add_all(
        ModelInfo(name=name, algorithm=algorithm, description=description)
        for name, algorithm, description in SEED_MODELS
    )
    db.session.commit()
    return len(SEED_MODELS)
