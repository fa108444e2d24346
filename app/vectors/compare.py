"""Compare 2-8 vectors (and the unsteered model) on one prompt, seed and settings, side by side."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app import schemas, store
from app.deps import FormDep, ServiceDep, SessionDep
from app.errors import AppError, Invalid
from app.executor.protocol import Downstream
from app.fields import MAX_TEXT, Text, Whole, describe, whole
from app.generations import sampling
from app.templating import render
from app.vectors import geometry

router = APIRouter(include_in_schema=False)


def parse_ids(ids: str) -> list[int]:
    out = list(dict.fromkeys(whole(x, "each id in ids") for x in ids.replace(" ", "").split(",") if x))
    if not 2 <= len(out) <= 8:
        raise Invalid(f"compare takes 2 to 8 vectors, got {len(out)}")
    return out


@router.get("/compare", response_class=HTMLResponse)
def compare(
    request: Request,
    session: SessionDep,
    ids: str = "",
    pick: Annotated[list[Whole] | None, Query()] = None,  # ticked checkboxes of a plain GET form
    prompt: Text = "",
    seed: Whole = 0,
    temperature: float = Query(0.0, ge=0),
    max_new_tokens: Annotated[Whole, Query(ge=1, le=512)] = 48,
    scale: float = 1.0,
) -> Response:
    if pick and not ids:  # one address for a comparison: ?ids=3,5
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "pick"])
        target = f"/compare?ids={','.join(map(str, parse_ids(','.join(map(str, pick)))))}"
        return RedirectResponse(f"{target}&{rest}" if rest else target, status_code=303)
    vector_ids = parse_ids(ids)
    vectors = [store.get_vector(session, i) for i in vector_ids]
    prompt = prompt or str(vectors[0].run.prompts[0])
    matrix = geometry.cosine_matrix(geometry.stack([v.values for v in vectors]))
    settings = {"seed": seed, "temperature": temperature, "top_p": 1.0, "max_new_tokens": max_new_tokens}
    cells = []
    for vector in [None, *vectors]:
        key = store.generation_key(
            vector.run.model_name if vector else vectors[0].run.model_name,
            vector.id if vector else None,
            scale,
            vector.block if vector else None,
            prompt,
            **settings,
        )
        cells.append({"vector": vector, "generation": store.find_generation(session, key)})
    same_space = len({(v.run.model_name, v.block, v.width) for v in vectors}) == 1
    context = {
        "vectors": vectors,
        "ids": ",".join(map(str, vector_ids)),
        "prompt": prompt,
        "settings": settings,
        "scale": scale,
        "cells": cells,
        "matrix": matrix.tolist(),
        "same_space": same_space,
    }
    return render(request, "compare/show.html", context)


@router.post("/compare/cell", response_class=HTMLResponse)
def compare_cell(request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    """Generate one missing cell (steered or unsteered) and render it."""
    fields = {
        k: str(form.get(k, ""))
        for k in ("vector_id", "prompt", "seed", "temperature", "max_new_tokens", "scale", "model")
    }
    data: dict[str, Any] = {k: v for k, v in fields.items() if v != ""}
    try:
        body = schemas.GenerationCreate.model_validate(data)
        result = sampling.generate_now(service, body)
    except ValidationError as exc:
        return render(request, "compare/_cell.html", {"error": describe(exc.errors()), "generation": None})
    except AppError as exc:
        return render(request, "compare/_cell.html", {"error": exc.message, "generation": None})
    generation = result["generation"] if body.vector_id is not None else result["unsteered"]
    return render(request, "compare/_cell.html", {"generation": generation, "error": ""})


@router.post("/compare/downstream", response_class=HTMLResponse)
def downstream(request: Request, service: ServiceDep, form: FormDep) -> HTMLResponse:
    """Cosines of the vectors' effects at their run's target block, computed on the worker: a POST,
    so that only this server's own pages can make the worker do it (app/guard.py)."""
    vector_ids = parse_ids(str(form.get("ids", "")))
    prompt = str(form.get("prompt", ""))
    if len(prompt) > MAX_TEXT:
        raise Invalid(f"the prompt is longer than {MAX_TEXT} characters")
    with service.db.session() as session:
        vectors = [store.get_vector(session, i) for i in vector_ids]
        run = vectors[0].run
        message = Downstream(
            model=run.model_name,
            prompt=prompt,
            block=vectors[0].block,
            target=run.target,
            vectors=[v.values for v in vectors],
            adapters=[
                {**store.adapter_payload(v), "position": i} for i, v in enumerate(vectors) if v.is_adapter
            ],
        )
        labels = [f"#{v.id}" for v in vectors]
    try:
        value = service.ask(message)
    except AppError as exc:
        return render(
            request, "compare/_heatmap.html", {"error": exc.message, "matrix": [], "labels": labels}
        )
    return render(
        request, "compare/_heatmap.html", {"error": "", "matrix": value["matrix"], "labels": labels}
    )
