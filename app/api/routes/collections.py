"""Collections: each holds one model's vectors, with its own index."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.auth import ReadAccess, WriteAccess
from app.api.deps import RegistryDep, StoreDep
from app.api.schemas import ErrorResponse
from app.api.store_schemas import CollectionOut, CreateCollectionRequest
from app.model.variants import get_variant
from app.runtime.executor import run_blocking

router = APIRouter(
    prefix="/collections",
    tags=["collections"],
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)


@router.get(
    "",
    dependencies=[ReadAccess],
    response_model=list[CollectionOut],
    summary="Every collection with its model, dim, size and index",
)
async def list_collections(store: StoreDep) -> list[CollectionOut]:
    return [CollectionOut(**info.__dict__) for info in await run_blocking(store.collections)]


@router.post(
    "",
    dependencies=[WriteAccess],
    response_model=CollectionOut,
    status_code=201,
    summary="Create an empty collection for a model",
)
async def create_collection(body: CreateCollectionRequest, store: StoreDep, registry: RegistryDep) -> CollectionOut:
    variant = get_variant(body.perception_encoder_version_id or registry.default_id)
    info = await run_blocking(
        store.create_collection, body.name, model=variant.version_id, dim=variant.dim, index_type=body.index_type
    )
    return CollectionOut(**info.__dict__)


@router.delete(
    "/{name}", dependencies=[WriteAccess], status_code=204, summary="Delete a collection, its images and its index"
)
async def delete_collection(name: str, store: StoreDep) -> Response:
    await run_blocking(store.delete_collection, name)
    return Response(status_code=204)
