"""DCT: a calibration probe, then one batch of factors per unit; the vectors come together at the
end, ranked by α² (a resumed run that stored them all goes straight to the gallery)."""

from __future__ import annotations

from collections.abc import Callable

from app.executor.job import Job, Units
from app.executor.training import report_training, resolve, send_vectors, train
from engine import LoadedModel, encode_prompts
from engine.discovery.embedder import Embedder
from engine.methods.dct import DctTrainer
from engine.specs import DctSpec

PHASES = {"jacobian": "the Jacobian start", "start": "output directions", "ranking": "ranking by α"}


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = DctSpec.from_dict(job.order.spec)
    if len(job.order.done) >= spec.n_vectors:
        source, _ = spec.span(lm.info)
        job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
        return False
    trainer = DctTrainer(lm, spec)
    batch = encode_prompts(lm.tokenizer, spec.prompts)
    source = trainer.source
    resolve(job, source, trainer.target, trainer.radius, trainer.residual_norm)

    def finish(_: object) -> None:
        found = trainer.result()
        result = {"calibration": found.calibration} if found.calibration else {}
        job.vectors = send_vectors(lm, job, batch, source, found, result=result)

    def report(force: bool) -> None:
        resolve(job, source, trainer.target, trainer.radius, trainer.residual_norm)  # R once calibrated
        t = trainer.transcoder
        if t is None:
            probes = trainer.calibrator.probes if trainer.calibrator is not None else 0
            job.progress(0.0, f"calibrating R: probe {probes}", phase="calibration")
            return
        where = f"iteration {t.iteration + 1}/{t.iterations}" if t.phase == "iterations" else ""
        note = where or PHASES.get(t.phase, "")
        report_training(job, trainer.progress(), stored=0, wanted=spec.n_vectors, force=force, note=note)

    return (yield from train(job, trainer, finish, report))
