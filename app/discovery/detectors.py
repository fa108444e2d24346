"""Detectors: a question asked of every completion of a run, as a regular expression (answered here,
on the stored texts) or as a yes/no question for a judge model (answered by a worker)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.errors import Invalid, NotFound
from app.kinds import Kind
from app.models import Detector, DetectorScore, Generation, Job, LanguageModel, Run, Vector
from app.store import create_run

MAX_PATTERN = 1000


class DetectorEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, description="Shown as the gallery's column.")
    kind: Literal["regex", "judge"] = Field(
        "regex", description="regex: case-insensitive search; judge: a yes/no question for a model."
    )
    pattern: str = Field(min_length=1, max_length=MAX_PATTERN, description="The expression or the question.")
    judge_model: str = Field("", max_length=500, description="judge only; empty: the run's own model.")


def compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise Invalid(f"not a valid regular expression: {exc}") from None


def all_detectors(session: Session) -> list[Detector]:
    return list(session.scalars(select(Detector).order_by(Detector.id)))


def get(session: Session, detector_id: int) -> Detector:
    detector = session.get(Detector, detector_id)
    if detector is None:
        raise NotFound(f"no detector {detector_id}")
    return detector


def save(session: Session, edit: DetectorEdit) -> Detector:
    name, pattern = edit.name.strip(), edit.pattern.strip()
    if not name or not pattern:
        raise Invalid("a detector needs a name and a pattern or question")
    if edit.kind == "regex":
        compiled(pattern)
    if session.scalars(select(Detector).where(Detector.name == name)).first() is not None:
        raise Invalid(f"there is already a detector called {name!r}")
    detector = Detector(name=name, kind=edit.kind, pattern=pattern, judge_model=edit.judge_model.strip())
    session.add(detector)
    session.flush()
    return detector


def delete_detector(session: Session, detector_id: int) -> None:
    get(session, detector_id)
    session.execute(delete(Detector).where(Detector.id == detector_id))


def run_texts(session: Session, run_id: int) -> list[tuple[int, str]]:
    """(generation id, text) of every stored steered completion of the run's vectors."""
    rows = session.execute(
        select(Generation.id, Generation.text)
        .join(Vector, Generation.vector_id == Vector.id)
        .where(Vector.run_id == run_id)
        .order_by(Generation.id)
    ).all()
    return [(int(i), str(t)) for i, t in rows]


def judged_rows(session: Session, run: Run) -> dict[str, Any]:
    """What a judging job's order carries: the judged run's completions as they are now."""
    return {"rows": run_texts(session, int(run.inputs["for_run"]))}


def regex_scores(pattern: str, texts: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    found = compiled(pattern)
    return [{"generation_id": gid, "score": 1.0 if found.search(text) else 0.0} for gid, text in texts]


def store_scores(session: Session, detector_id: int, rows: Sequence[dict[str, Any]]) -> int:
    """Keep these scores (a generation scored again gets its new score); how many were stored."""
    ids = [int(r["generation_id"]) for r in rows]
    for lo in range(0, len(ids), 500):
        session.execute(
            delete(DetectorScore).where(
                DetectorScore.detector_id == detector_id, DetectorScore.generation_id.in_(ids[lo : lo + 500])
            )
        )
    session.add_all(
        DetectorScore(detector_id=detector_id, generation_id=int(r["generation_id"]), score=float(r["score"]))
        for r in rows
    )
    session.flush()
    return len(rows)


def counts(session: Session, run_id: int, threshold: float) -> dict[int, int]:
    """Per detector, how many of the run's vectors have a completion scoring at least the threshold."""
    rows = session.execute(
        select(DetectorScore.detector_id, func.count(func.distinct(Generation.vector_id)))
        .join(Generation, DetectorScore.generation_id == Generation.id)
        .join(Vector, Generation.vector_id == Vector.id)
        .where(Vector.run_id == run_id, DetectorScore.score >= threshold)
        .group_by(DetectorScore.detector_id)
    ).all()
    return {int(d): int(n) for d, n in rows}


def queue_judging(
    session: Session, detector: Detector, run: Run, model: LanguageModel, *, priority: int = 0
) -> Job:
    """A job asking the judge model the detector's question about each of the run's completions
    (a `detect` run; the worker answers in batches, the scores land like a regex's)."""
    if not run_texts(session, run.id):
        raise Invalid(f"run {run.id} has no steered completions to judge")
    spec = {"model": model.name, "prompts": [], "question": detector.pattern}
    return create_run(
        session,
        kind=Kind.DETECT,
        spec=spec,
        model=model,
        inputs={"for_run": run.id, "detector_id": detector.id},
        priority=priority,
    )
