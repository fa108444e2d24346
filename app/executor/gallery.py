"""Samples in the worker: a run's gallery (every vector and the unsteered model on the run's
prompts) and the rows of a generation job, decoded in a continuous batch (one decode step per unit
of the compute loop), sent in groups as they finish.

Before its samples, a gallery that wants them probes each vector's working scale (the engine's
probe, engine/refine/working_scale.py, one decode step or fluency batch per unit) and samples the
vector there too, beside x1."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator, Iterator
from typing import Any, cast

from app.executor.codec import from_bytes
from app.executor.job import Job, Units
from app.executor.protocol import Generations, WorkingScales
from app.executor.training import stack
from engine import Decoder, GenerationRequest, LoadedModel
from engine.methods.adapters import Adapter
from engine.refine.working_scale import PROBE_PROMPTS, TOKENS, working_scale_steps
from engine.steer import pauses


def request(
    prompt: str,
    sampling: dict[str, Any],
    block: int | None = None,
    terms: Any = (),
    adapter: Adapter | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        block=block,
        terms=terms,
        adapter=adapter,
        seed=int(sampling["seed"]),
        temperature=float(sampling["temperature"]),
        top_p=float(sampling["top_p"]),
        max_new_tokens=int(sampling["max_new_tokens"]),
    )


def steered(
    prompt: str, sampling: dict[str, Any], block: int, values: bytes, scale: float, adapter: Adapter | None
) -> GenerationRequest:
    """A row steered by a stored vector at a scale: by its factors when it is an adapter."""
    if adapter is not None:
        return request(prompt, sampling, adapter=adapter.scaled(scale))
    return request(prompt, sampling, block, [(from_bytes(values), scale)])


def decode_rows(
    lm: LoadedModel, job: Job, rows: list[tuple[dict[str, Any], GenerationRequest]], batch: int, start: float
) -> Units:
    """Decode rows in a continuous batch of `batch`, sending finished generations in groups."""
    decoder = Decoder(lm, max_rows=batch)
    waiting: Iterator[tuple[int, tuple[dict[str, Any], GenerationRequest]]] = iter(enumerate(rows))
    tags: dict[int, dict[str, Any]] = {}
    finished: list[dict[str, Any]] = []
    sent = 0
    more = True

    steps = 0
    # Steps the whole gallery takes at most: every row its prefill and all its tokens, `batch` at a time.
    budget = len(rows) / batch * (max(r.max_new_tokens for _, r in rows) + 1)

    def report(force: bool) -> None:
        done = sent + len(finished)
        eta = job.clock.eta(max(budget - steps, 1.0)) if done < len(rows) else None
        job.progress(
            start + (1 - start) * done / len(rows),
            f"samples {done}/{len(rows)}{job.clock.left(eta)}",
            force=force,
            phase="samples",
            samples_done=done,
            samples_total=len(rows),
            eta_s=eta,
        )

    def send() -> None:
        nonlocal sent, finished
        if finished:
            job.emit(Generations(*job.ids, rows=finished))
            sent, finished = sent + len(finished), []
            report(force=True)

    while more or decoder:
        if job.cancelled:
            send()  # what finished is kept
            return True
        while more and len(decoder) < 2 * batch:  # added as room comes: a gallery can be large
            item = next(waiting, None)
            if item is None:
                more = False
                break
            i, (tag, request) = item
            tags[i] = tag
            decoder.add(i, request)
        # A gallery step is steered through hooks, so it cannot pause: it gives way instead when
        # a message arrives (undone, and run again at the next unit; never twice in a row).
        step = decoder.step(preempt=pauses.waiting)
        if step.preempted:
            yield
            continue
        steps += 1
        job.clock.tick(phase="samples")
        for key, result in step.finished:
            tag = tags.pop(cast(int, key))
            finished.append(
                {
                    **tag,
                    "text": result.text,
                    "n_tokens": result.n_tokens,
                    "finish_reason": result.finish_reason,
                }
            )
        if len(finished) >= batch or not (more or decoder):
            send()
        else:
            report(force=False)
        yield
    return False


def working_scales(
    lm: LoadedModel, job: Job, *, start: float
) -> Generator[None, None, dict[int, float] | None]:
    """Each plain vector's working scale (probed now, or found by an earlier attempt), sent as one
    event per block; None if the job was cancelled meanwhile. Adapters are not probed."""
    wanted = job.order.gallery
    known = {int(i): float(s) for i, s in (wanted.get("working") or {}).items()}
    if not wanted.get("probe"):
        return known
    prompts = list(dict.fromkeys(wanted["prompts"]))[:PROBE_PROMPTS]
    tokens = min(TOKENS, int(wanted["max_new_tokens"]))
    by_block: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    for index, block, values in job.vectors:
        if index not in known and index not in job.adapters:
            by_block[block].append((index, values))
    for block, members in by_block.items():
        vectors = stack([values for _, values in members], lm.info.width)
        batch = int(wanted.get("batch", 16))
        steps = working_scale_steps(lm, block, vectors, prompts, tokens=tokens, batch_size=batch)
        while True:
            if job.cancelled:
                return None
            try:
                phase, done, total = next(steps)
            except StopIteration as end:
                found = end.value
                break
            job.clock.tick()
            job.progress(
                start, f"working scales of {len(members)} vectors: {phase} {done}/{total}", phase="probe"
            )
            yield
        rows = [{"index": i, **ws.to_dict()} for (i, _), ws in zip(members, found, strict=True)]
        job.emit(WorkingScales(*job.ids, rows=rows))
        known.update({i: ws.scale for (i, _), ws in zip(members, found, strict=True)})
    return known


def gallery(lm: LoadedModel, job: Job, *, start: float) -> Units:
    """Greedy samples of every vector of the run (and the unsteered model) on the run's prompts, at x1
    and at each vector's working scale; the progress bar goes on from `start` (where training left it)."""
    wanted = job.order.gallery
    if not wanted:
        return False
    scales = yield from working_scales(lm, job, start=start)
    if scales is None:
        return True
    done = {(d[0], d[1], float(d[2])) for d in wanted.get("done", [])}  # (index, prompt, scale)
    settings: dict[str, Any] = {
        "seed": 0,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": int(wanted["max_new_tokens"]),
    }
    rows: list[tuple[dict[str, Any], GenerationRequest]] = []
    for p, prompt in enumerate(wanted["prompts"]):
        if (None, p, 0.0) not in done:
            tag = {"vector_index": None, "prompt": prompt, "scale": 0.0, "block": None, **settings}
            rows.append((tag, request(prompt, settings)))
    for index, block, values in job.vectors:
        working = scales.get(index, 1.0)
        for scale in (1.0,) if working == 1.0 else (1.0, working):
            for p, prompt in enumerate(wanted["prompts"]):
                if (index, p, scale) not in done:
                    tag = {
                        "vector_index": index,
                        "prompt": prompt,
                        "scale": scale,
                        "block": block,
                        **settings,
                    }
                    adapter = job.adapters.get(index)
                    rows.append((tag, steered(prompt, settings, block, values, scale, adapter)))
    if not rows:
        return False
    return (yield from decode_rows(lm, job, rows, int(wanted.get("batch", 16)), start))
