"""Composed queries, vector queries, paging and date order, through a real server and the Python client.

Every composed answer is checked against the same search by the vector the client computes from the
embedding routes itself: the server's sum of parts must be that vector, not merely "some result".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.client import PESearchClient
from app.client.models import PESearchAPIError
from tests.support.constants import TEST_DIM
from tests.support.images import encode, photo
from tests.support.server import REPO_ROOT, launch, server_env, wait_ready

pytestmark = pytest.mark.slow  # a real uvicorn process

COLLECTION = "features"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields a running Server
    workdir = tmp_path_factory.mktemp("features")
    server = launch(workdir, "PE-Core-T16-384")
    try:
        problem = wait_ready(server, 240)
        assert problem is None, f"{problem}\n{server.log_tail()}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(server):  # noqa: ANN001, ANN201
    with PESearchClient(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def stored(api, tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:  # noqa: ANN001
    """Twelve photos, added one after another (so ids and created_at rise together)."""
    out = {}
    for seed in range(12):
        data = encode(photo(160, 120, seed=700 + seed), "PNG")
        added = api.add_image(data, metadata={"n": seed, "half": seed % 2}, collection=COLLECTION)
        out[added.id] = data
    return out


def cli(server, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:  # noqa: ANN001
    """`pe-search ARGS` as its own process, on the server's data dir."""
    env = server_env(server.log_path.parent / "data", "PE-Core-T16-384")
    command = [sys.executable, "-m", "app.cli", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def same_answer(composed, reference) -> None:  # noqa: ANN001
    assert [h.id for h in composed] == [h.id for h in reference]
    np.testing.assert_allclose([h.score for h in composed], [h.score for h in reference], atol=2e-5)


def test_text_parts_sum_to_the_vector_a_client_would_compute(api, stored) -> None:  # noqa: ANN001
    texts = api.embed_text(["a dog", "on a beach", "people"])
    expected = unit(texts[0] + texts[1] - texts[2])
    composed = api.search("a dog", positive=["on a beach"], negative=["people"], top_k=8, collection=COLLECTION)
    same_answer(composed.hits, api.search_vector(expected, top_k=8, collection=COLLECTION))
    # The same query as weighted parts, with a weight on one of them.
    weighted = api.search(
        parts=[{"text": "a dog", "weight": 2}, {"text": "people", "weight": -0.5}], top_k=8, collection=COLLECTION
    )
    expected = unit(2 * texts[0] - 0.5 * texts[2])
    same_answer(weighted.hits, api.search_vector(expected, top_k=8, collection=COLLECTION))


def test_image_text_and_stored_image_parts(api, stored, tmp_path) -> None:  # noqa: ANN001
    first, second = list(stored)[:2]
    path = tmp_path / "query.png"
    path.write_bytes(encode(photo(160, 120, seed=9999), "PNG"))
    image_vec = api.embed_images(path)[0]
    text_vec = api.embed_text("at night")[0]
    page = api.search(image=path, positive=["at night"], negative=[{"image_id": second}], collection=COLLECTION)
    stored_vec = api.embed_images(stored[second])[0]
    same_answer(page.hits, api.search_vector(unit(image_vec + text_vec - stored_vec), collection=COLLECTION))
    # A stored image alone finds itself first.
    assert api.search(image_id=first, collection=COLLECTION).hits[0].id == first


def test_three_text_parts_cost_one_forward_pass(api, server, stored) -> None:  # noqa: ANN001
    def text_passes() -> tuple[float, float]:
        families = {
            f.name: f.samples for f in text_string_to_metric_families(requests.get(f"{server.url}/metrics").text)
        }
        samples = families["pe_search_inference_batch_size"]
        count = sum(s.value for s in samples if s.name.endswith("_count") and s.labels["kind"] == "text")
        total = sum(s.value for s in samples if s.name.endswith("_sum") and s.labels["kind"] == "text")
        return count, total

    before = text_passes()
    # Texts never sent before, so the text cache answers none of them.
    api.search("a red kite", positive=["over a hill"], negative=["in the rain"], collection=COLLECTION)
    after = text_passes()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 3)


def test_vector_queries(api, stored) -> None:  # noqa: ANN001
    vector = api.embed_text("a lighthouse")[0]
    same_answer(
        api.search_vector(vector * 7.5, collection=COLLECTION), api.search_text("a lighthouse", collection=COLLECTION)
    )
    with pytest.raises(PESearchAPIError) as wrong:
        api.search_vector(vector[:100], collection=COLLECTION)
    assert wrong.value.status_code == 422
    assert "100" in wrong.value.message and str(TEST_DIM) in wrong.value.message
    with pytest.raises(PESearchAPIError) as zero:
        api.search_vector(np.zeros(TEST_DIM), collection=COLLECTION)
    assert zero.value.status_code == 422 and "zeros" in zero.value.message
    # NaN is not JSON; Python's encoder writes it anyway, and the server must refuse it, not crash.
    bad = requests.post(
        f"{api.api_url}/search",
        data=json.dumps({"vector": [float("nan")] + [0.1] * (TEST_DIM - 1), "collection": COLLECTION}),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert bad.status_code == 422


@pytest.mark.parametrize(
    "body,status,words",
    [
        ({"negative": ["people"]}, 422, "no positive part"),
        ({"positive": [], "parts": []}, 422, "empty"),
        ({"positive": ["a cat"], "negative": ["a cat"]}, 422, "cancel out"),
        ({"positive": ["a cat", {"image": {"type": "base64", "value": "bm90IGFuIGltYWdl"}}]}, 400, "part 2 (image)"),
        (
            {"positive": ["a cat"], "parts": [{"text": "x", "image_id": 3}]},
            422,
            "part 2: A query part takes exactly one",
        ),
        ({"positive": ["a cat", {"image_id": 999_999_999}]}, 404, "part 2 (image_id)"),
    ],
)
def test_query_errors_say_what_is_wrong(api, stored, body: dict, status: int, words: str) -> None:  # noqa: ANN001
    response = requests.post(f"{api.api_url}/search", json={**body, "collection": COLLECTION}, timeout=60)
    assert response.status_code == status, response.text
    text = response.json().get("message") or json.dumps(response.json())
    assert words in text


def test_cursor_pages_cover_the_ranking_once(api, stored) -> None:  # noqa: ANN001
    whole = api.search("a garden", top_k=9, collection=COLLECTION).hits
    pages = list(api.search_pages("a garden", top_k=4, collection=COLLECTION))
    paged = [h for p in pages for h in p.hits]
    assert [h.id for h in paged[:9]] == [h.id for h in whole]
    assert len(paged) == len(stored) and len({h.id for h in paged}) == len(stored)
    assert [p.offset for p in pages] == [0, 4, 8]
    assert pages[-1].next_cursor is None
    # Offset paging gives the same pages; past the end is an empty page, not an error.
    assert [h.id for h in api.search("a garden", top_k=4, offset=4, collection=COLLECTION).hits] == [
        h.id for h in pages[1].hits
    ]
    beyond = api.search("a garden", top_k=4, offset=500, collection=COLLECTION)
    assert beyond.hits == [] and beyond.next_cursor is None


def test_a_cursor_keeps_its_filter_and_refuses_other_collections_and_tampering(api, stored) -> None:  # noqa: ANN001
    first = api.search("a bridge", top_k=2, filter={"metadata": {"half": 1}}, collection=COLLECTION)
    assert first.next_cursor
    rest = [
        h
        for p in api.search_pages("a bridge", top_k=2, filter={"metadata": {"half": 1}}, collection=COLLECTION)
        for h in p.hits
    ]
    assert all(h.metadata["half"] == 1 for h in rest) and len(rest) == len(stored) // 2
    api.create_collection("other-features")
    with pytest.raises(PESearchAPIError) as other:
        api.search(cursor=first.next_cursor, collection="other-features")
    assert other.value.status_code == 400 and "search again" in other.value.message
    payload, mac = first.next_cursor.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    with pytest.raises(PESearchAPIError) as tampered:
        api.search(cursor=forged)
    assert tampered.value.status_code == 400 and "search again" in tampered.value.message
    with pytest.raises(PESearchAPIError) as mixed:
        api.search("a bridge", cursor=first.next_cursor)
    assert mixed.value.status_code == 400


def test_a_cursor_expires_with_the_index_generation(api, server, stored) -> None:  # noqa: ANN001
    page = api.search("a tower", top_k=3, collection=COLLECTION)
    done = cli(server, "reindex", "--collection", COLLECTION)
    assert done.returncode == 0, done.stderr
    with pytest.raises(PESearchAPIError) as stale:
        api.search(cursor=page.next_cursor)
    assert stale.value.status_code == 400 and "rebuilt" in stale.value.message


def test_date_order_sorts_the_best_matches(api, stored) -> None:  # noqa: ANN001
    best = {h.id for h in api.search("a harbour", top_k=6, collection=COLLECTION).hits}
    newest = api.search("a harbour", top_k=3, order="-created_at", candidates=6, collection=COLLECTION)
    following = api.search(cursor=newest.next_cursor)
    ids = [h.id for h in newest.hits + following.hits]
    # Ids rise with insertion time here, so the newest of the six best are the largest ids, in order.
    assert ids == sorted(best, reverse=True)
    assert following.next_cursor is None
    oldest = api.search("a harbour", top_k=6, order="created_at", candidates=6, collection=COLLECTION)
    assert [h.id for h in oldest.hits] == sorted(best)
    records = [api.get_image(i).created_at for i in ids]
    assert records == sorted(records, reverse=True)


def test_get_search_takes_offset_and_order(api, server, stored) -> None:  # noqa: ANN001
    q = {"q": "a field", "k": 3, "collection": COLLECTION}
    first = requests.get(f"{server.url}/search", params=q, timeout=30).json()
    second = requests.get(f"{server.url}/search", params={**q, "offset": 3}, timeout=30).json()
    whole = api.search("a field", top_k=6, collection=COLLECTION).hits
    assert [r["id"] for r in first["results"] + second["results"]] == [h.id for h in whole]
    assert first["next_cursor"] and second["offset"] == 3


def test_cli_composed_search_matches_the_server(api, server, stored) -> None:  # noqa: ANN001
    args = [
        "search",
        "a dog",
        "--and",
        "on a beach",
        "--not",
        "people",
        "--collection",
        COLLECTION,
        "-k",
        "5",
        "--json",
    ]
    remote = cli(server, *args, "--server", server.url)
    assert remote.returncode == 0, remote.stderr
    local = cli(server, *args)
    assert local.returncode == 0, local.stderr
    expected = api.search("a dog", positive=["on a beach"], negative=["people"], top_k=5, collection=COLLECTION)
    for output in (remote.stdout, local.stdout):
        rows = json.loads(output)
        assert [r["id"] for r in rows] == [h.id for h in expected.hits]
    nothing = cli(server, "search", "--not", "people", "--collection", COLLECTION)
    assert nothing.returncode != 0 and "no positive part" in nothing.stderr


@pytest.fixture(scope="module")
def twins(api) -> tuple[float, bytes, list[int]]:  # noqa: ANN001
    """A `dups` collection: three distinct photos, then one photo as PNG, BMP and TIFF (the same pixels).

    Returns a threshold between the twins' cosine and the distinct photos' highest, the PNG, and the ids.
    """
    pixels = photo(200, 150, seed=4242)
    files = [encode(photo(200, 150, seed=s), "PNG") for s in (1, 2, 3)]
    files += [encode(pixels, "PNG"), encode(pixels, "BMP"), encode(pixels, "TIFF")]
    vectors = api.embed_images(files)
    scores = vectors @ vectors.T
    distinct = max(scores[i, j] for i in range(6) for j in range(6) if i < j and not (i >= 3 and j >= 3))
    twin = min(scores[3, 4], scores[3, 5], scores[4, 5])
    assert twin > distinct, "the test needs the twins closer than any two different photos"
    ids = [api.add_image(data, collection="dups").id for data in files]
    return float((twin + distinct) / 2), files[3], ids


def test_duplicates_route_and_client(api, server, twins) -> None:  # noqa: ANN001
    threshold, _, ids = twins
    raw = requests.get(f"{server.url}/collections/dups/duplicates", params={"threshold": threshold}, timeout=60).json()
    assert [[i["id"] for i in g["images"]] for g in raw["groups"]] == [ids[3:]]
    assert raw["total_groups"] == 1 and raw["groups"][0]["keep"] is None and raw["exact"] == []
    largest = api.duplicates("dups", threshold=threshold, resolve="keep-largest")
    (group,) = largest.groups
    # Same pixel count in all three: the largest file stays.
    heaviest = max(group.images, key=lambda i: i.byte_size)
    assert heaviest.byte_size > min(i.byte_size for i in group.images)
    assert group.keep == heaviest.id and group.min_score >= threshold
    assert api.duplicates("dups", threshold=threshold, resolve="keep-oldest").groups[0].keep == ids[3]
    # Looking deletes nothing.
    assert next(c.count for c in api.collections() if c.name == "dups") == 6
    bad = requests.get(f"{server.url}/collections/dups/duplicates", params={"resolve": "keep-best"}, timeout=30)
    assert bad.status_code == 422
    missing = requests.get(f"{server.url}/collections/nope/duplicates", timeout=30)
    assert missing.status_code == 404


def test_duplicates_cli_dry_run_then_delete(api, server, twins) -> None:  # noqa: ANN001
    threshold, _, ids = twins

    def run(*extra: str) -> subprocess.CompletedProcess:
        return cli(server, "duplicates", "--collection", "dups", "--threshold", str(threshold), *extra)

    dry = run("--resolve", "keep-oldest")
    assert dry.returncode == 0 and "dry run: 2 images would be deleted" in dry.stdout, dry.stderr
    assert next(c.count for c in api.collections() if c.name == "dups") == 6
    refused = run("--delete")
    assert refused.returncode == 2 and "--resolve" in refused.stderr
    done = run("--resolve", "keep-oldest", "--delete", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == 2
    # The server sees the deletion: no group is left, the oldest twin stays.
    assert api.duplicates("dups", threshold=threshold).groups == []
    assert {h.id for h in api.search_id(ids[3], top_k=10, collection="dups")} == {*ids[:4]}


def test_ingest_screens_near_duplicates(api, server, twins, tmp_path) -> None:  # noqa: ANN001
    threshold, png, _ = twins
    folder = tmp_path / "library"
    folder.mkdir()
    (folder / "a.png").write_bytes(png)
    from PIL import Image

    Image.open(folder / "a.png").save(folder / "b.tiff")  # the same pixels, other bytes
    (folder / "c-copy.png").write_bytes(png)  # the very same bytes

    def ingest(mode: str) -> dict:
        args = ["ingest", str(folder), "--collection", "screened", "--near-duplicates", mode]
        done = cli(server, *args, "--near-threshold", str(threshold), "--json", "--quiet")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    skipped = ingest("skip")
    assert (skipped["added"], skipped["duplicates"], skipped["near_duplicates_skipped"]) == (1, 1, 1)
    (near,) = skipped["near_duplicates"]
    assert near["uri"].endswith("b.tiff") and near["score"] >= threshold
    warned = ingest("warn")  # the skipped file was not recorded, so it is read again, and now added
    assert (warned["added"], warned["unchanged"], warned["near_duplicates_skipped"]) == (1, 2, 0)
    assert warned["near_duplicates"][0]["of_id"] is not None
    report = api.duplicates("screened", threshold=threshold)
    assert len(report.groups) == 1 and len(report.exact) == 1
    assert sorted(Path(u).name for u in report.exact[0].uris) == ["a.png", "c-copy.png"]
