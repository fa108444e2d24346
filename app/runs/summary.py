"""What a run page says about a run: the values it resolved (blocks, R, steps run) and its settings
as a table a person reads, each setting with its meaning and whether it was left at its default."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import schemas
from app.models import Job, Run, Vector

# Where each kind of run's settings are described (the API bodies carry the help text).
BODIES: dict[str, type[BaseModel]] = {
    "melbo": schemas.MelboCreate,
    "random": schemas.MelboCreate,
    "dct": schemas.MelboCreate,
    "adapter": schemas.MelboCreate,
    "chain": schemas.ChainCreate,
    "calibrate": schemas.CalibrationCreate,
    "generate": schemas.SamplesCreate,
    "scale_sweep": schemas.ScaleSweepCreate,
    "rpath": schemas.RPathCreate,
    "generalize": schemas.GeneralizeCreate,
    "search": schemas.SearchCreate,
}
NOT_SETTINGS = {"prompts", "priority", "vector_id", "vector_ids", "block"}


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


@dataclass
class Setting:
    name: str
    value: str
    meaning: str
    default: bool  # left at the default


def _g(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def _pending(job: Job | None) -> str:
    if job is not None and job.status in ("queued", "running"):
        return "not known yet: resolved when training starts"
    return "–"


def _steps(run: Run, taken: list[int]) -> Fact | None:
    if not taken:
        return None
    budget = run.spec.get("steps")
    of = f" of {budget}" if budget is not None else ""
    if min(taken) == max(taken):
        return Fact("steps run", f"{taken[0]}{of} per vector")
    median = statistics.median(taken)
    return Fact("steps run", f"{min(taken)}–{max(taken)}{of} per vector", f"median {median:g}")


def facts(run: Run, job: Job | None, stats: VectorStats) -> list[Fact]:
    """The values a run actually used, resolved from its defaults once it ran."""
    out: list[Fact] = []
    result = run.result or {}
    if run.kind == "import":
        blocks = sorted(set(stats.blocks))
        out.append(Fact("file", str(run.spec.get("file", "")), "imported, not trained"))
        if result.get("prompts_from") == "probe":
            out.append(Fact("prompts", "probe prompts", "the file names none; samples are shown on these"))
        same = result.get("same_as") or {}
        if same:
            twins = ", ".join(
                f"index {i} = #{vid}" for i, vid in sorted(same.items(), key=lambda x: int(x[0]))
            )
            out.append(Fact("stored before", twins, "the same values were imported or trained already"))
        out.append(Fact("block" if len(blocks) == 1 else "blocks", ", ".join(map(str, blocks)) or "–"))
        out.append(Fact("vectors", str(stats.count)))
        norms = stats.norms
        if norms:
            span = _g(norms[0]) if len(norms) == 1 else f"{_g(min(norms))}–{_g(max(norms))}"
            out.append(Fact("norm", span))
        return out
    if run.kind == "scale_sweep":
        return _scale_sweep(run, job)
    if run.kind in ("rpath", "generalize", "search"):
        out.append(Fact("refines", f"vector #{run.parent_vector_id}", "its vectors are children of it"))
    if run.inputs.get("orthogonal_to"):
        earlier = ", ".join(f"#{i}" for i in run.inputs["orthogonal_to"])
        out.append(
            Fact("orthogonal to", earlier, "the earlier vectors of its orthogonal run, as it was trained")
        )
    if run.kind == "search":  # no objective, so no target block: the block it steers and what it kept
        out.append(Fact("block", str(run.spec["block"])))
        out.append(Fact("vectors", str(stats.count), "the best found, best first"))
        return out
    if run.kind == "calibrate":
        found = result.get("calibration") or {}
        if found:
            out.append(Fact("blocks", f"{found['source']} → {found['target']}"))
            out.append(
                Fact(
                    "calibrated R",
                    _g(found["radius"]),
                    f"{found['relative']:.3f} × residual norm {_g(found['residual_norm'])}; "
                    f"nonlinearity ratio {found['ratio']:.2f} (threshold {found['threshold']:g})",
                )
            )
        else:
            out.append(Fact("calibrated R", _pending(job)))
        return out
    if run.source is not None and run.target is not None:
        given = run.spec.get("source") is not None, run.spec.get("target") is not None
        note = "as asked" if all(given) else "from the model's depth" if not any(given) else ""
        out.append(Fact("blocks", f"{run.source} → {run.target}", note))
    else:
        out.append(Fact("blocks", _pending(job)))
    if run.kind in ("melbo", "random", "dct", "adapter"):
        if run.radius is not None:
            residual = result.get("residual_norm")
            calibrated = result.get("calibration") or {}
            note = "as asked" if run.spec.get("radius") is not None else "default"
            if calibrated:
                note = f"calibrated: nonlinearity ratio {calibrated['ratio']:.2f}"
            if run.kind == "adapter":
                # R scales W + R·B·Aᵀ, not a norm in the residual stream: no share of it to show.
                if note == "default":
                    note = "default: moves the residual stream about as far as a default-norm vector"
            elif residual:
                note = f"{run.radius / residual:.3f} × residual norm {_g(residual)} ({note})"
            out.append(Fact("R", _g(run.radius), note))
        else:
            out.append(Fact("R", _pending(job)))
    if run.kind == "adapter":
        rank = run.spec.get("rank")  # the validated spec carries the engine's default
        out.append(Fact("rank", "–" if rank is None else str(rank), "columns of each adapter's A and B"))
    if run.kind == "chain":
        norms = stats.norms
        if norms:
            out.append(Fact("norms", f"{_g(min(norms))}–{_g(max(norms))}"))
        if result.get("stop_reason"):
            out.append(Fact("stopped", str(result["stop_reason"]).replace("_", " ")))
    asked = run.spec.get("n_vectors")
    out.append(Fact("vectors", f"{stats.count} of {asked}" if asked else str(stats.count)))
    steps = _steps(run, stats.steps)
    if steps is not None:
        out.append(steps)
    return out


def _scale_sweep(run: Run, job: Job | None) -> list[Fact]:
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


def _shown(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_shown(v) for v in value)
    return str(value)


def settings(run: Run) -> list[Setting]:
    """The run's spec as rows: name, value, meaning, whether it is the default."""
    body = BODIES.get(run.kind)
    fields = body.model_fields if body is not None else {}
    rows = []
    for name, value in run.spec.items():
        if name in NOT_SETTINGS:
            continue
        info = fields.get(name)
        meaning = (info.description or "") if info is not None else ""
        default = info is not None and not info.is_required() and info.default == value
        rows.append(Setting(name, _shown(value), meaning, default))
    return rows
