"""What a job must have stored before it may be recorded `succeeded`: the invariant checked at its end."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import kinds, store
from app.models import Job, Vector


def missing(
    session: Session, job: Job, *, reported: set[int], lost: bool, answered: bool, gallery_tokens: int
) -> str:
    """What the job's run lacks, in words; empty when everything it reported (and owes) is stored.

    - no event of this attempt failed to be stored;
    - every vector the attempt reported is stored, and a run that counts its vectors (MELBO, DCT,
      adapters) has as many as it asked for (a chain may stop early by itself, so its length is what
      it reported), a refinement at least one;
    - every vector of a run with a gallery has its sample on every prompt (at x1 and at its working
      scale), beside the unsteered one;
    - a scoring, judging or scale-sweep run stored its answer.
    """
    run = job.run
    info = kinds.of(run.kind)
    if lost:
        return "a result the worker sent could not be stored"
    if info.answered:
        return "" if answered else "the answer is not stored"
    stored = set(session.scalars(select(Vector.index).where(Vector.run_id == run.id)))
    absent = sorted(reported - stored)
    if absent:
        return f"vector(s) {', '.join(map(str, absent))} are not stored"
    if info.counted:
        wanted = int(run.spec.get("n_vectors", 0))
        if len(stored) < wanted:
            return f"{len(stored)} of {wanted} vectors are stored"
    if info.refines and not stored:  # each finds at least one vector (search: its start)
        return "its vectors are not stored"
    if info.gallery and run.prompts:
        done = store.gallery_done(session, run, run.prompts, gallery_tokens)
        # Every vector (at x1 and at its working scale) and the unsteered model, on each distinct prompt.
        scales = sum(len(store.gallery_scales(v)) for v in run.vectors)
        owed = (scales + 1) * len(set(run.prompts))
        if len(done) < owed:
            return f"{len(done)} of {owed} gallery samples are stored"
    return ""
