"""Vectors: one read (with its values if asked), its files out (a vector or a run), files in
(safetensors or GGUF).

The worker writes the safetensors, GGUF and PEFT files, so the exports (plain reads, linked from the
pages) answer this server's own pages and scripts only, never another site's page.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from app import guard, responses, schemas, store
from app.deps import ServiceDep, SessionDep
from app.errors import NotFound
from app.fields import Whole, maybe_whole
from app.responses import Created, Imported, JobOut, VectorOut
from app.runs import launch
from app.vectors import dashboard, interop
from app.vectors.responses import DashboardOut

router = APIRouter(prefix="/api", tags=["vectors"])
SAME_SITE = [Depends(guard.refuse_cross_site)]


def _download(data: bytes, name: str, fmt: str) -> Response:
    return Response(
        data, media_type=interop.MEDIA[fmt], headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get(
    "/vectors/{vector_id}/export",
    summary="One vector as safetensors, GGUF, JSON or a Neuronpedia payload",
    dependencies=SAME_SITE,
)
def export_vector(vector_id: Whole, service: ServiceDep, format: str = "safetensors") -> Response:
    data, name = interop.export_vector(service, vector_id, format)
    return _download(data, name, format)


@router.get(
    "/vectors/{vector_id}/peft",
    summary="A steering adapter as a PEFT LoRA adapter (a zip of adapter_model.safetensors and "
    "adapter_config.json)",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "The PEFT adapter folder, zipped."}},
    dependencies=SAME_SITE,
)
def export_peft(vector_id: Whole, service: ServiceDep) -> Response:
    data, name = interop.export_peft(service, vector_id)
    return Response(
        data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get(
    "/runs/{run_id}/export",
    summary="All of a run's vectors in one safetensors or JSON file",
    dependencies=SAME_SITE,
)
def export_run(run_id: Whole, service: ServiceDep, format: str = "safetensors") -> Response:
    data, name = interop.export_run(service, run_id, format)
    return _download(data, name, format)


@router.post(
    "/imports", status_code=201, summary="Import vectors from a safetensors or GGUF file (never pickle)"
)
def import_vectors(
    service: ServiceDep,
    file: UploadFile = File(...),  # noqa: B008 - FastAPI's way to declare an upload
    model: str = Form(""),
    block: str = Form(""),
) -> Imported:
    data = file.file.read(service.settings.max_upload_bytes + 1)
    run_id = interop.import_file(
        service,
        data=data,
        filename=file.filename or "upload",
        model=model or None,
        block=maybe_whole(block, "block"),
    )
    sample_jobs = interop.sample_imported(service, run_id)
    with service.db.session() as session:
        return Imported(
            run_id=run_id, vector_ids=interop.run_vector_ids(session, run_id), sample_jobs=sample_jobs
        )


@router.get("/vectors/{vector_id}", response_model_exclude_unset=True)
def read_vector(vector_id: Whole, session: SessionDep, values: bool = False) -> VectorOut:
    return responses.vector(store.get_vector(session, vector_id), values=values)


@router.post(
    "/vectors/{vector_id}/dashboard",
    status_code=201,
    summary="Read a vector: the tokens it pushes and where it occurs in its model's corpus (a job)",
)
def create_dashboard(vector_id: Whole, body: schemas.DashboardCreate, service: ServiceDep) -> Created:
    job = launch.start_dashboard(service, vector_id, body)
    return Created(job=JobOut.model_validate(job), run_id=job.run_id)


@router.get("/vectors/{vector_id}/dashboard", summary="A vector's stored dashboard, with its concept cosines")
def read_dashboard(vector_id: Whole, session: SessionDep) -> DashboardOut:
    found = dashboard.export(session, store.get_vector(session, vector_id))
    if found is None:
        raise NotFound(f"vector {vector_id} has not been read yet: POST to this address to read it")
    return DashboardOut.model_validate(found)
