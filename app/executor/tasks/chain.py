"""MELBO-ortho chains: each batch of new orthogonal vectors is sent as it converges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.executor.codec import from_bytes, to_bytes
from app.executor.job import Job, Units
from app.executor.protocol import Vectors
from app.executor.training import report_training, resolve, stack, train
from engine import ChainSpec, LoadedModel
from engine.discovery.embedder import Embedder
from engine.methods.chains import ChainTrainer


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = ChainSpec.from_dict(job.order.spec)
    assert job.order.theta0 is not None, "a chain order carries its θ₀"
    previous = stack(job.order.done, lm.info.width)
    trainer = ChainTrainer(lm, spec, from_bytes(job.order.theta0), previous=previous, on_progress=job.point)
    job.vectors = [(i, trainer.source, b) for i, b in enumerate(job.order.done)]
    resolve(job, trainer.source, trainer.target)

    def finish(new: list[Any]) -> None:
        chain = trainer.vectors
        summary = {k: v for k, v in trainer.result().to_dict().items() if k not in ("records", "settings")}
        job.emit(
            Vectors(
                *job.ids,
                source=trainer.source,
                target=trainer.target,
                result=summary,
                rows=[
                    {
                        "index": r.index,
                        "block": trainer.source,
                        "values": to_bytes(chain[r.index]),
                        "norm": r.norm,
                        "objective": r.loss,
                        "kl": r.kl,
                        "metrics": {"loss": r.loss, "steps": r.steps},
                    }
                    for r in new
                ],
            )
        )
        job.vectors += [(r.index, trainer.source, to_bytes(chain[r.index])) for r in new]

    def report(force: bool) -> None:
        stopped = "" if trainer.reason == "completed" else f"stopped: {trainer.reason.replace('_', ' ')}"
        stored = len(job.order.done)
        report_training(
            job, trainer.progress(), stored=stored, wanted=spec.n_vectors, force=force, note=stopped
        )

    return (yield from train(job, trainer, finish, report))
