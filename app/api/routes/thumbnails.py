"""Thumbnails for result grids, with validators so browsers and proxies cache them."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from app.api.auth import ReadAccess
from app.api.deps import StoreDep, ThumbnailsDep
from app.api.schemas import ErrorResponse
from app.api.store_schemas import ImageId
from app.runtime.executor import run_blocking
from app.services.thumbnails import SIZES, nearest_size

router = APIRouter(
    prefix="/images", tags=["images"], dependencies=[ReadAccess], responses={404: {"model": ErrorResponse}}
)
# Content-addressed: a sha256 and a size always name the same bytes.
CACHE_CONTROL = "public, max-age=31536000, immutable"


@router.get(
    "/{image_id}/thumbnail", summary=f"A JPEG thumbnail, sizes {', '.join(map(str, SIZES))} (the next one up is served)"
)
async def thumbnail(
    image_id: ImageId,
    request: Request,
    store: StoreDep,
    thumbnails: ThumbnailsDep,
    size: int = Query(default=256, ge=1, le=4096),
) -> Response:
    image = await run_blocking(store.image, image_id)
    size = nearest_size(size)
    etag = f'"{image.sha256[:32]}-{size}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    path = await run_blocking(thumbnails.path, image, size)
    return FileResponse(path, media_type="image/jpeg", headers=headers)
