"""Calibrating R: one probe of the root finding per unit, the answer sent as the run's result."""

from __future__ import annotations

from collections.abc import Callable

from app.executor.job import Job, Units
from app.executor.protocol import Result
from engine import CalibrateSpec, LoadedModel
from engine.discovery.embedder import Embedder
from engine.methods.calibrate import Calibrator


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    calibrator = Calibrator(lm, CalibrateSpec.from_dict(job.order.spec))
    yield
    while not calibrator.finished:
        if job.cancelled:
            return True
        radius, ratio = calibrator.step()
        job.progress(0.5, f"R {radius:.3g}: ratio {ratio:.3g}", phase="calibration")
        yield
    result = calibrator.result()
    job.emit(Result(*job.ids, result={"calibration": result.to_dict()}, radius=result.radius))
    return False
