"""Images: upload, read, serve the file, edit metadata, delete."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from app.api.auth import ReadAccess, WriteAccess
from app.api.deps import ImagesDep, MetricsDep, StoreDep
from app.api.schemas import ErrorResponse
from app.api.store_schemas import (
    AddImageRequest,
    AddImageResponse,
    ImageId,
    ImageRecord,
    PatchImageRequest,
    UploadFields,
    storable_json,
)
from app.errors import InvalidInputError, UnsupportedMediaError
from app.runtime.executor import run_blocking
from index.dto import ImageRecord as StoredImage
from index.errors import ImageNotFoundError
from index.store import VectorStore

router = APIRouter(
    prefix="/images",
    tags=["images"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)


async def _record(image: StoredImage, store: VectorStore) -> ImageRecord:
    collection = await run_blocking(store.collection_name, image.collection_id)
    if collection is None:  # deleted with its collection since the image was read
        raise ImageNotFoundError(image.id)
    return ImageRecord.of(image, collection)


@router.post(
    "",
    dependencies=[WriteAccess],
    response_model=AddImageResponse,
    summary="Add one image: multipart upload (file, metadata, collection) or JSON with an image object",
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "metadata": {"type": "string", "description": "a JSON object"},
                            "collection": {"type": "string", "default": "default"},
                        },
                    }
                },
                "application/json": {"schema": {"$ref": "#/components/schemas/AddImageRequest"}},
            },
            "required": True,
        }
    },
)
async def add_image(request: Request, images: ImagesDep, metrics: MetricsDep) -> AddImageResponse:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        body, data = await _from_form(request)
    elif content_type.startswith("application/json"):
        body = _validated(AddImageRequest, await request.body())
        data = await images.read(body.image.to_ref())
    else:
        raise UnsupportedMediaError("Send the image as multipart/form-data (a `file` part) or as application/json.")
    added = await images.add_upload(
        data, collection=body.collection, metadata=body.metadata, model=body.perception_encoder_version_id
    )
    metrics.observe_ingest(added.collection, ingested=1)
    return AddImageResponse(id=added.id, created=added.created, collection=added.collection)


def _validated(model: type[BaseModel], raw: bytes | dict[str, Any]) -> Any:
    """Validation errors as FastAPI's own 422, without echoing the input (it may be binary)."""
    try:
        return model.model_validate_json(raw) if isinstance(raw, bytes) else model.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


async def _from_form(request: Request) -> tuple[UploadFields, bytes]:
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInputError("The multipart body needs a `file` part.")
    fields: dict[str, Any] = {k: form.get(k) for k in ("collection", "perception_encoder_version_id") if form.get(k)}
    fields["metadata"] = _parse_metadata(form.get("metadata"))
    return _validated(UploadFields, fields), await upload.read()


def _parse_metadata(raw: Any) -> dict[str, Any]:
    if raw in (None, ""):
        return {}
    try:
        value = storable_json(json.loads(str(raw)))
    except ValueError:
        raise InvalidInputError("`metadata` must be a JSON object, without NaN or infinities.") from None
    if not isinstance(value, dict):
        raise InvalidInputError("`metadata` must be a JSON object.")
    return value


@router.get("/{image_id}", dependencies=[ReadAccess], response_model=ImageRecord, summary="An image's record")
async def get_image(image_id: ImageId, store: StoreDep) -> ImageRecord:
    image = await run_blocking(store.image, image_id)
    return await _record(image, store)


@router.get(
    "/{image_id}/file",
    dependencies=[ReadAccess],
    summary="The image file (uploads and files still under their root; URLs redirect)",
)
async def get_image_file(image_id: ImageId, store: StoreDep, images: ImagesDep) -> Response:
    image = await run_blocking(store.image, image_id)
    location = await run_blocking(images.file_location, image)
    if isinstance(location, str):
        return RedirectResponse(location, status_code=307)
    media = f"image/{(image.format or 'octet-stream').lower()}" if image.format else "application/octet-stream"
    return FileResponse(location, media_type=media)


@router.patch(
    "/{image_id}",
    dependencies=[WriteAccess],
    response_model=ImageRecord,
    summary="Set or remove metadata keys (null removes)",
)
async def patch_image(image_id: ImageId, body: PatchImageRequest, store: StoreDep) -> ImageRecord:
    updated = await run_blocking(store.patch_metadata, image_id, body.metadata)
    return await _record(updated, store)


@router.delete(
    "/{image_id}", dependencies=[WriteAccess], status_code=204, summary="Delete an image from its collection and index"
)
async def delete_image(image_id: ImageId, store: StoreDep) -> Response:
    await run_blocking(store.image, image_id)  # 404 when absent
    await run_blocking(store.delete_images, [image_id])
    return Response(status_code=204)
