"""What a run page says a run resolved (blocks, R, steps run, what it refines), one function per
kind of run; the kinds table (app/kinds.py) says which one a kind uses."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Job, Run, Vector


@dataclass
class VectorStats:
    """What the summary needs of a run's vectors, read without their values or curves (the live
    stream renders the summary at every progress event)."""

    blocks: list[int]
    norms: list[float]
    steps: list[int]  # optimizer steps each trained vector took

    @property
    def count(self) -> int:
        return len(self.norms)


def vector_stats(session: Session, run: Run) -> VectorStats:
    rows = session.execute(
        select(Vector.block, Vector.norm, Vector.metrics["steps"].as_integer())
        .where(Vector.run_id == run.id)
        .order_by(Vector.index)
    ).all()
    return VectorStats(
        blocks=[int(r[0]) for r in rows],
        norms=[float(r[1]) for r in rows],
        steps=[int(r[2]) for r in rows if r[2] is not None],
    )


@dataclass
class Fact:
    name: str
    value: str
    note: str = ""  # how the value came about


def _g(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def _pending(job: Job | None) -> str:
    if job is not None and job.status in ("queued", "running"):
        return "not known yet: resolved when training starts"
    return "–"


def _steps(run: Run, taken: list[int]) -> list[Fact]:
    if not taken:
        return []
    budget = run.spec.get("steps")
    of = f" of {budget}" if budget is not None else ""
    if min(taken) == max(taken):
        return [Fact("steps run", f"{taken[0]}{of} per vector")]
    median = statistics.median(taken)
    return [Fact("steps run", f"{min(taken)}–{max(taken)}{of} per vector", f"median {median:g}")]


def _blocks(run: Run, job: Job | None) -> Fact:
    if run.source is None or run.target is None:
        return Fact("blocks", _pending(job))
    given = run.spec.get("source") is not None, run.spec.get("target") is not None
    note = "as asked" if all(given) else "from the model's depth" if not any(given) else ""
    return Fact("blocks", f"{run.source} → {run.target}", note)


def _count(run: Run, stats: VectorStats) -> list[Fact]:
    """How many vectors it stored (of how many it asked for), and the steps each took."""
    asked = run.spec.get("n_vectors")
    return [
        Fact("vectors", f"{stats.count} of {asked}" if asked else str(stats.count)),
        *_steps(run, stats.steps),
    ]


def _radius(run: Run, job: Job | None, *, residual_share: bool = True) -> Fact:
    if run.radius is None:
        if run.source is not None and job is not None and job.status == "running":
            return Fact("R", "not known yet: the default R is being calibrated for this model")
        return Fact("R", _pending(job))
    result = run.result or {}
    residual = result.get("residual_norm")
    calibrated = result.get("calibration") or {}
    note = "as asked" if run.spec.get("radius") is not None else "default"
    if run.spec.get("radius") is None and run.spec.get("radius_fraction") is not None:
        note = f"{run.spec['radius_fraction']:g} × residual norm, as asked"
    if calibrated:
        note = f"calibrated: nonlinearity ratio {calibrated['ratio']:.2f}"
    share = result.get("default_share") or {}
    if share and residual:
        return Fact("R", _g(run.radius), _default_share(share, residual))
    if not residual_share:
        # An adapter's R scales W + R·B·Aᵀ, not a norm in the residual stream: no share of it to show.
        if note == "default":
            note = "default: moves the residual stream about as far as a default-norm vector"
    elif residual:
        note = f"{run.radius / residual:.3f} × residual norm {_g(residual)} ({note})"
    return Fact("R", _g(run.radius), note)


def _default_share(share: dict[str, Any], residual: float) -> str:
    """Where a MELBO run's default R came from: the share of the norm calibrated for its model."""
    where = f"blocks {share['source']}→{share['target']}, {share['positions']} positions"
    head = f"{share['share']:.3f} × residual norm {_g(residual)}"
    if share.get("fallback"):
        return f"{head} (default; no calibrated share at {where}: {share['fallback']})"
    times = "" if share.get("multiple", 1) == 1 else f"{share['multiple']:g} × "
    return (
        f"{head} (default: {times}the share calibrated for this model at {where}; "
        f"nonlinearity ratio {share['ratio']:.2f})"
    )


def _orthogonal_to(run: Run) -> list[Fact]:
    if not run.inputs.get("orthogonal_to"):
        return []
    earlier = ", ".join(f"#{i}" for i in run.inputs["orthogonal_to"])
    return [Fact("orthogonal to", earlier, "the earlier vectors of its orthogonal run, as it was trained")]


def _refines(run: Run) -> list[Fact]:
    return [
        Fact("refines", f"vector #{run.parent_vector_id}", "its vectors are children of it"),
        *_orthogonal_to(run),
    ]


# One function per kind of run (the kinds table picks), each: (run, its job, its vectors) -> facts.


def plain(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """Blocks and vectors: what any run says."""
    return [*_orthogonal_to(run), _blocks(run, job), *_count(run, stats)]


def trained(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """A MELBO, random or DCT run: its blocks, its R (with where it came from), its vectors."""
    return [_blocks(run, job), _radius(run, job), *_count(run, stats)]


def adapter(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    rank = run.spec.get("rank")  # the validated spec carries the engine's default
    return [
        _blocks(run, job),
        _radius(run, job, residual_share=False),
        Fact("rank", "–" if rank is None else str(rank), "columns of each adapter's A and B"),
        *_count(run, stats),
    ]


def chain(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    out = [_blocks(run, job)]
    if stats.norms:
        out.append(Fact("norms", f"{_g(min(stats.norms))}–{_g(max(stats.norms))}"))
    stopped = (run.result or {}).get("stop_reason")
    if stopped:
        out.append(Fact("stopped", str(stopped).replace("_", " ")))
    return [*out, *_count(run, stats)]


def refined(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """An R-path or a generalization: the vector it refines, then what a trained run says."""
    return [*_refines(run), _blocks(run, job), *_count(run, stats)]


def search(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """No objective, so no target block: the block it steers and what it kept."""
    return [
        *_refines(run),
        Fact("block", str(run.spec["block"])),
        Fact("vectors", str(stats.count), "the best found, best first"),
    ]


def calibration(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    found = (run.result or {}).get("calibration") or {}
    if not found:
        return [Fact("calibrated R", _pending(job))]
    return [
        Fact("blocks", f"{found['source']} → {found['target']}"),
        Fact(
            "calibrated R",
            _g(found["radius"]),
            f"{found['relative']:.3f} × residual norm {_g(found['residual_norm'])}; "
            f"nonlinearity ratio {found['ratio']:.2f} (threshold {found['threshold']:g})",
        ),
    ]


def imported(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    result = run.result or {}
    blocks = sorted(set(stats.blocks))
    out = [Fact("file", str(run.spec.get("file", "")), "imported, not trained")]
    if result.get("prompts_from") == "probe":
        out.append(Fact("prompts", "probe prompts", "the file names none; samples are shown on these"))
    same = result.get("same_as") or {}
    if same:
        twins = ", ".join(f"index {i} = #{vid}" for i, vid in sorted(same.items(), key=lambda x: int(x[0])))
        out.append(Fact("stored before", twins, "the same values were imported or trained already"))
    out.append(Fact("block" if len(blocks) == 1 else "blocks", ", ".join(map(str, blocks)) or "–"))
    out.append(Fact("vectors", str(stats.count)))
    if stats.norms:
        norms = stats.norms
        out.append(Fact("norm", _g(norms[0]) if len(norms) == 1 else f"{_g(min(norms))}–{_g(max(norms))}"))
    return out


def scale_sweep(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """A scale sweep's vector, scales and the two scales that sum it up (with the norms they give)."""
    scales, result = run.spec.get("scales", []), run.result or {}
    out = [
        Fact("vector", f"#{run.parent_vector_id}", f"block {run.spec.get('block')}"),
        Fact("scales", f"{_g(min(scales))} to {_g(max(scales))}", f"{len(scales)} multiples of the vector"),
    ]
    if "points" not in result:
        waiting = job is not None and job.status in ("queued", "running")
        out.append(Fact("first change", "not known yet: found when the sweep ends" if waiting else "–"))
        return out
    norm = float(result["norm"])
    for name, at, none in (
        ("first change", result.get("first_change"), "no scale changes most completions"),
        ("breaks", result.get("breaks"), "no scale makes most completions gibberish"),
    ):
        out.append(
            Fact(name, f"× {_g(at)}", f"norm {_g(abs(at) * norm)}") if at is not None else Fact(name, none)
        )
    return out


def concept(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """A concept: its block and method, and how well its threshold tells its training sets apart."""
    found = run.result.get("concept")
    method = str(run.spec.get("method", ""))
    if not found:
        return [Fact("block", _pending(job)), Fact("method", method)]
    return [
        Fact("block", str(found["block"])),
        Fact("method", method),
        Fact("prompts", f"{found['positive']} with, {found['negative']} without"),
        Fact("threshold", _g(found["threshold"]), "a prompt's largest projection above it: present"),
        Fact("training ROC AUC", _g(found["auc"], 3), f"accuracy {_g(found['accuracy'], 3)}"),
        Fact("norm", _g(found["norm"]), f"raw difference {_g(found['raw_norm'])}, R {_g(found['radius'])}"),
    ]
