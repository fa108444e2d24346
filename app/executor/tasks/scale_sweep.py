"""A scale sweep of a stored vector: a decode step, a chunk of KL or a scoring unit per unit of the
compute loop, sent back as one `scale_sweep` event when it is done (a cancelled sweep keeps nothing)."""

from __future__ import annotations

from collections.abc import Callable

from app.executor.codec import from_bytes
from app.executor.job import Job, Units
from app.executor.protocol import SweepFound
from engine.discovery.embedder import Embedder
from engine.models import LoadedModel
from engine.refine.scale_sweep import scale_sweep_steps
from engine.specs import ScaleSweepSpec

# Where each phase sits on the job's progress bar (decoding is most of the work, then scoring).
PHASES = {"completions": (0.0, 0.6), "kl": (0.6, 0.65), "scoring": (0.65, 1.0)}
WORDS = {"completions": "completions", "kl": "next-token KL, scale chunk", "scoring": "scoring"}


def run(lm: LoadedModel, job: Job, embedder: Callable[[], Embedder]) -> Units:
    spec = ScaleSweepSpec.from_dict(job.order.spec)
    assert job.order.theta0 is not None, "a scale sweep's order carries its vector"
    vector = from_bytes(job.order.theta0)
    n = len(spec.prompts) * len(spec.scales)
    job.progress(0.0, f"sweeping {len(spec.scales)} scales on {len(spec.prompts)} prompts", force=True)
    yield
    batch = int(job.order.gallery.get("batch", 16))
    steps = scale_sweep_steps(lm, embedder(), vector, spec, batch_size=batch)
    while True:
        if job.cancelled:
            return True  # nothing is stored before the end: a cancelled sweep leaves no half
        try:
            phase, done, total = next(steps)
        except StopIteration as end:
            job.emit(SweepFound(*job.ids, found=end.value.to_dict()))
            return False
        job.clock.tick(phase=phase)
        low, high = PHASES[phase]
        job.progress(
            low + (high - low) * done / max(total, 1),
            f"{WORDS[phase]} {done}/{total} ({n} completions in all)",
            phase=phase,
        )
        yield
