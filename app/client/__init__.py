"""A small typed HTTP client for the pe-search API, in the style of Roboflow's `inference-sdk`.

    client = PESearchClient(api_url="http://127.0.0.1:9001", api_key="...")
    added = client.add_image("photo.jpg", metadata={"label": "dog"})
    hits = client.search_text("a dog on a beach", top_k=5)

Needs only `requests` and `numpy`; importing it loads no model and starts nothing.
"""

from app.client.http import PESearchClient
from app.client.models import (
    AddedImage,
    Collection,
    ImageInput,
    ImageRecord,
    IndexType,
    IngestJob,
    IngestKind,
    PESearchAPIError,
    SearchHit,
    SearchPage,
)

__all__ = [
    "AddedImage",
    "Collection",
    "ImageInput",
    "ImageRecord",
    "IndexType",
    "IngestJob",
    "IngestKind",
    "PESearchAPIError",
    "PESearchClient",
    "SearchHit",
    "SearchPage",
]
