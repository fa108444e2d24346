"""Steering adapters, a batch per chunk like fast MELBO; each is sent with its factors, its mean
change (the vector it is browsed as) and its next-token KL; the gallery steers with the factors."""

from __future__ import annotations

from collections.abc import Callable

from app.executor.codec import adapter_from
from app.executor.job import Job, Units
from app.executor.training import report_training, resolve, send_vectors, train
from engine import LoadedModel, encode_prompts
from engine.discovery.embedder import Embedder
from engine.methods.adapter_trainer import AdapterTrainer
from engine.specs import AdapterSpec


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = AdapterSpec.from_dict(job.order.spec)
    first = len(job.order.done)
    trainer = AdapterTrainer(lm, spec, first=first)
    source = trainer.source
    resolve(job, source, trainer.target, trainer.radius, trainer.residual_norm)
    job.vectors = [(i, source, b) for i, b in enumerate(job.order.done)]
    job.adapters = {int(p["index"]): adapter_from(p) for p in job.order.adapters}
    batch = encode_prompts(lm.tokenizer, spec.prompts)

    def finish(_: object) -> None:
        trained = trainer.take()
        job.vectors += send_vectors(lm, job, batch, source, trained, adapters=trained.adapters)
        job.adapters.update(zip((r.index for r in trained.records), trained.adapters, strict=True))

    def report(force: bool) -> None:
        report_training(job, trainer.progress(), stored=first, wanted=spec.n_vectors, force=force)

    return (yield from train(job, trainer, finish, report))
