"""Fuzzing: schemathesis over the app's own OpenAPI schema, hypothesis over decoding and manifests."""

from __future__ import annotations

import contextlib
import string
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from app.api.app import create_app
from app.errors import ImageLoadError
from app.ingest.sources import Rejected, SourceError, SourceItem, manifest_items
from app.media.decode import decode_image
from app.settings import Settings
from tests.support.images import encode, photo
from tests.support.server import launch, wait_ready

# schemathesis collects operations when this module is imported: the schema comes from an app
# built only for that (no lifespan runs), and the cases go to a real uvicorn process.
schema = schemathesis.openapi.from_dict(create_app(Settings(weights="random")).openapi())
# Generated URL images could name any host: the fuzzed server takes no URL input at all.
FUZZ_ENV = {"PE_SEARCH_URL_INPUT_ENABLED": "false", "PE_SEARCH_MAX_BATCH": "8"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields a running Server
    server = launch(tmp_path_factory.mktemp("fuzz"), "PE-Core-T16-384", FUZZ_ENV)
    try:
        problem = wait_ready(server, 240)
        assert problem is None, f"{problem}\n{server.log_tail()}"
        yield server
    finally:
        server.stop()


@pytest.mark.slow  # a real uvicorn process, and 25 generated cases per operation
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_responses_match_the_schema(case, fuzz_server) -> None:  # noqa: ANN001
    case.call_and_validate(
        base_url=fuzz_server.url,
        timeout=60,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )


SEED_IMAGES = [
    encode(photo(40, 30, seed=s), fmt) for s, fmt in enumerate(["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
]


@given(
    seed=st.sampled_from(SEED_IMAGES),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_damaged_images_decode_or_fail_cleanly(seed: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(seed[: max(cut, 1)] if cut < len(seed) else seed)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    try:
        image = decode_image(bytes(data))
    except ImageLoadError as exc:
        assert exc.cause
    else:
        assert image.mode == "RGB" and image.width > 0 and image.height > 0


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_arbitrary_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    with contextlib.suppress(ImageLoadError):
        assert decode_image(data).mode == "RGB"


cell = st.text(alphabet=string.printable + "éü漢", max_size=12)


@given(
    rows=st.lists(st.dictionaries(st.sampled_from(["path", "url", "label", "n", ""]), cell, max_size=4), max_size=6),
    jsonl=st.booleans(),
    raw_tail=st.text(max_size=30),
)
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_manifests_parse_or_fail_cleanly(rows: list[dict], jsonl: bool, raw_tail: str) -> None:
    import csv
    import io
    import json

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ("m.jsonl" if jsonl else "m.csv")
        if jsonl:
            # utf-8, as manifests are read: the locale's encoding (ASCII in CI) cannot write every generated text.
            path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + raw_tail, encoding="utf-8")
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=["path", "url", "label", "n", ""], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            path.write_text(buffer.getvalue() + raw_tail, encoding="utf-8")
        try:
            items = list(manifest_items(path))
        except SourceError as exc:
            assert "column" in str(exc)
            return
        assert all(isinstance(item, (SourceItem, Rejected)) for item in items)
        for item in items:
            if isinstance(item, SourceItem) and item.path is not None:
                assert item.root is not None and item.path.is_relative_to(item.root)


def test_a_manifest_path_with_a_nul_is_rejected_not_a_crash(tmp_path: Path) -> None:
    """Found by the property test above: os.path raised on the NUL instead of the row being refused."""
    path = tmp_path / "m.csv"
    path.write_text("path,label\nbad\0name.jpg,x\n", encoding="utf-8")
    (item,) = list(manifest_items(path))
    assert isinstance(item, Rejected) and "NUL" in item.reason
