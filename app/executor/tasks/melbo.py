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
    resolve(job, source, problem.target, problem.radius, problem.residual_norm)
    job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
    batch = encode_prompts(lm.tokenizer, spec.prompts)
    first = len(job.order.done)

    def finish(_: object) -> None:
        job.vectors += send_vectors(lm, job, batch, source, trainer.take())

    def report(force: bool) -> None:
        report_training(job, trainer.progress(), stored=first, wanted=spec.n_vectors, force=force)

    return (yield from train(job, trainer, finish, report))
