"""MELBO and its random baseline: a fast-mode batch (or one reference-mode vector) per chunk."""

from __future__ import annotations

from collections.abc import Callable

from app.executor.job import Job, Units
from app.executor.training import report_training, resolve, send_vectors, stack, train
from engine import LoadedModel, MelboSpec, encode_prompts
from engine.discovery.embedder import Embedder
from engine.methods.melbo import MelboTrainer


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = MelboSpec.from_dict(job.order.spec)
    trainer = MelboTrainer(
        lm, spec, orthogonal_to=stack(job.order.done, lm.info.width), on_progress=job.point
    )
    problem = trainer.problem
    source = problem.source
    # R is None while the default R is still being calibrated (a probe a step); sent again once known.
    resolve(job, source, problem.target, problem.known_radius, problem.residual_norm)
    job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
    batch = encode_prompts(lm.tokenizer, spec.prompts)
    first = len(job.order.done)
    # The default share is cached per loaded model: a later run (a twin) does not calibrate again.
    cached = trainer.default is not None and not trainer.calibrating

    def finish(_: object) -> None:
        trained = trainer.take()
        # Where the default R came from (the calibrated share, cached per model), for the run page.
        result = {"default_share": {**trained.calibration, "cached": cached}} if trained.calibration else {}
        job.vectors += send_vectors(lm, job, batch, source, trained, result=result)

    def report(force: bool) -> None:
        resolve(job, source, problem.target, problem.known_radius, problem.residual_norm)
        if trainer.calibrating:
            job.progress(0.0, "calibrating the default R for this model", force=force, phase="calibration")
            return
        report_training(job, trainer.progress(), stored=first, wanted=spec.n_vectors, force=force)

    return (yield from train(job, trainer, finish, report))
