"""The Roboflow-compatible routes through the app, per ../shared/spec/roboflow-compat.md."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.model.encoder import PEEncoder
from tests.support.constants import READ_KEY, TEST_MAX_BATCH
from tests.support.images import b64, encode, image_object, photo
from tests.support.runtimes import expected_auto, parity_floor

EMBED_IMAGE = "/perception_encoder/embed_image"
EMBED_TEXT = "/perception_encoder/embed_text"
COMPARE = "/perception_encoder/compare"
CLASSIFY = "/perception_encoder/classify"
RESPONSE_KEYS = {"inference_id", "frame_id", "time"}

JPEG = encode(photo(320, 240, seed=10), "JPEG", quality=92)
PNG = encode(photo(200, 300, seed=11), "PNG")


def post(client: TestClient, route: str, body: dict, **kwargs) -> dict:
    response = client.post(route, json=body, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def test_embed_image_single_matches_encoder(client: TestClient, encoder: PEEncoder) -> None:
    body = post(client, EMBED_IMAGE, {"image": image_object(JPEG)})
    assert set(body) == RESPONSE_KEYS | {"embeddings"}
    assert body["inference_id"] is None and body["frame_id"] is None and body["time"] > 0
    from app.media.decode import decode_image

    expected = encoder.embed_images([decode_image(JPEG)])
    np.testing.assert_allclose(np.array(body["embeddings"]), expected, atol=1e-6)


def test_embed_image_list_keeps_order_and_data_prefix(client: TestClient) -> None:
    prefixed = {"type": "BASE64", "value": "data:image/png;base64," + b64(PNG)}
    body = post(client, EMBED_IMAGE, {"image": [image_object(JPEG), prefixed, image_object(JPEG)]})
    vectors = np.array(body["embeddings"])
    assert vectors.shape == (3, 512)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    single_png = post(client, EMBED_IMAGE, {"image": image_object(PNG)})["embeddings"][0]
    np.testing.assert_allclose(vectors[1], single_png, atol=1e-5)


def test_embed_text_string_and_list(client: TestClient, encoder: PEEncoder) -> None:
    one = post(client, EMBED_TEXT, {"text": "a photo of a cat"})
    assert set(one) == RESPONSE_KEYS | {"embeddings"} and len(one["embeddings"]) == 1
    many = post(client, EMBED_TEXT, {"text": ["a dog", "a photo of a cat"]})["embeddings"]
    np.testing.assert_allclose(many[1], one["embeddings"][0], atol=1e-5)
    np.testing.assert_allclose(many, encoder.embed_texts(["a dog", "a photo of a cat"]), atol=1e-6)


def test_roboflow_request_fields_and_unknown_fields_are_accepted(client: TestClient) -> None:
    body = {
        "text": "a cat",
        "id": "abc",
        "api_key": "body-key",
        "usage_billable": False,
        "start": 1.5,
        "source": "sdk",
        "source_info": "x",
        "disable_model_monitoring": True,
        "perception_encoder_version_id": "PE-Core-T16-384",
        "model_id": "perception_encoder/PE-Core-T16-384",
        "something_new": {"nested": True},
    }
    assert len(post(client, EMBED_TEXT, body)["embeddings"][0]) == 512


# One request per Roboflow route, and the result field each answers with.
ROBOFLOW_REQUESTS = {
    EMBED_IMAGE: ({"image": image_object(PNG)}, "embeddings"),
    EMBED_TEXT: ({"text": "a cat"}, "embeddings"),
    COMPARE: ({"subject": "a cat", "subject_type": "text", "prompt": ["a dog"]}, "similarity"),
}


def send_with_key(client: TestClient, route: str, place: str, key: str | None):
    """The route's request with the key where a Roboflow client puts it: query, Bearer header or body."""
    body, kwargs = dict(ROBOFLOW_REQUESTS[route][0]), {}
    if key is not None and place == "query":
        kwargs["params"] = {"api_key": key, "countinference": "false", "service_secret": "s"}
    elif key is not None and place == "bearer":
        kwargs["headers"] = {"Authorization": f"Bearer {key}"}
    elif key is not None:
        body["api_key"] = key
    return client.post(route, json=body, **kwargs)


@pytest.mark.parametrize("place", ["query", "bearer", "body"])
@pytest.mark.parametrize("route", list(ROBOFLOW_REQUESTS), ids=lambda route: route.rsplit("/", 1)[1])
def test_api_key_in_query_header_or_body_is_accepted_and_a_wrong_or_missing_one_is_401(
    keyed_client: TestClient, route: str, place: str
) -> None:
    accepted = send_with_key(keyed_client, route, place, READ_KEY)
    assert accepted.status_code == 200, accepted.text
    assert len(accepted.json()[ROBOFLOW_REQUESTS[route][1]]) == 1
    wrong = send_with_key(keyed_client, route, place, "not-a-key")
    missing = send_with_key(keyed_client, route, place, None)
    for refused in (wrong, missing):
        assert refused.status_code == 401, refused.text[:200]
        assert "API key" in refused.json()["message"] and refused.headers["www-authenticate"] == "Bearer"


def _cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_compare_single_list_and_dict(client: TestClient) -> None:
    subject = image_object(JPEG)
    image_vec = post(client, EMBED_IMAGE, {"image": subject})["embeddings"][0]
    cat, dog = post(client, EMBED_TEXT, {"text": ["a cat", "a dog"]})["embeddings"]

    single = post(client, COMPARE, {"subject": subject, "prompt": "a cat"})
    assert set(single) == RESPONSE_KEYS | {"similarity", "parent_id"} and single["parent_id"] is None
    assert single["similarity"] == [pytest.approx(_cosine(image_vec, cat), abs=1e-5)]

    listed = post(client, COMPARE, {"subject": subject, "prompt": ["a dog", "a cat"]})["similarity"]
    assert listed == [
        pytest.approx(_cosine(image_vec, dog), abs=1e-5),
        pytest.approx(_cosine(image_vec, cat), abs=1e-5),
    ]

    keyed = post(client, COMPARE, {"subject": subject, "prompt": {"dog": "a dog", "cat": "a cat"}})["similarity"]
    assert list(keyed) == ["dog", "cat"]
    assert keyed == {"dog": pytest.approx(listed[0], abs=1e-5), "cat": pytest.approx(listed[1], abs=1e-5)}


def test_compare_image_prompts_and_a_dict_with_type_and_value_is_one_image(client: TestClient) -> None:
    subject = image_object(JPEG)
    one = post(client, COMPARE, {"subject": subject, "prompt": image_object(JPEG), "prompt_type": "image"})
    assert one["similarity"] == [pytest.approx(1.0, abs=1e-5)]
    assert -1.0 <= one["similarity"][0] <= 1.0
    keyed = post(
        client,
        COMPARE,
        {"subject": subject, "prompt": {"same": image_object(JPEG), "other": b64(PNG)}, "prompt_type": "image"},
    )["similarity"]
    assert keyed["same"] == pytest.approx(1.0, abs=1e-5) and keyed["other"] < 0.9999


def test_compare_bare_string_subject_is_base64_image(client: TestClient) -> None:
    bare = post(client, COMPARE, {"subject": b64(JPEG), "prompt": ["a cat"]})["similarity"]
    obj = post(client, COMPARE, {"subject": image_object(JPEG), "prompt": ["a cat"]})["similarity"]
    assert bare == pytest.approx(obj, abs=1e-6)


def test_compare_text_subject(client: TestClient) -> None:
    cat, dog = post(client, EMBED_TEXT, {"text": ["a cat", "a dog"]})["embeddings"]
    result = post(client, COMPARE, {"subject": "a cat", "subject_type": "text", "prompt": ["a dog", "a cat"]})
    assert result["similarity"] == [pytest.approx(_cosine(cat, dog), abs=1e-5), pytest.approx(1.0, abs=1e-5)]


def test_compare_scores_are_plain_cosine_not_softmax(client: TestClient) -> None:
    """The spec: cosines of the L2-normalised embeddings, in [-1, 1]; no logit scale, no softmax."""
    texts = ["a", "b", "c"]
    image_vec = np.array(post(client, EMBED_IMAGE, {"image": image_object(JPEG)})["embeddings"][0])
    text_vecs = np.array(post(client, EMBED_TEXT, {"text": texts})["embeddings"])
    png_vec = np.array(post(client, EMBED_IMAGE, {"image": image_object(PNG)})["embeddings"][0])

    by_text = post(client, COMPARE, {"subject": image_object(JPEG), "prompt": texts})["similarity"]
    assert all(-1.0 <= s <= 1.0 for s in by_text)
    np.testing.assert_allclose(by_text, text_vecs @ image_vec, atol=1e-5)

    image_prompts = [image_object(JPEG), image_object(PNG)]
    body = {"subject": "a", "subject_type": "text", "prompt": image_prompts, "prompt_type": "image"}
    by_image = post(client, COMPARE, body)["similarity"]
    assert all(-1.0 <= s <= 1.0 for s in by_image)
    np.testing.assert_allclose(by_image, [text_vecs[0] @ image_vec, text_vecs[0] @ png_vec], atol=1e-5)


def test_classify_gives_sorted_probabilities(client: TestClient) -> None:
    subject = image_object(JPEG)
    prompts = {"cat": "a photo of a cat", "dog": "a photo of a dog", "car": "a photo of a car"}
    result = post(client, CLASSIFY, {"subject": subject, "prompt": prompts})
    similarity = post(client, COMPARE, {"subject": subject, "prompt": prompts})["similarity"]
    predictions = result["predictions"]
    confidences = [p["confidence"] for p in predictions]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-6)
    assert result["top"] == predictions[0]["class"] and result["confidence"] == confidences[0]
    logits = {name: result["logit_scale"] * s for name, s in similarity.items()}
    expected = {n: np.exp(v) / sum(np.exp(list(logits.values()))) for n, v in logits.items()}
    for prediction in predictions:
        assert prediction["confidence"] == pytest.approx(expected[prediction["class"]], abs=1e-5)
        assert prediction["similarity"] == pytest.approx(similarity[prediction["class"]], abs=1e-6)
        assert list(prompts)[prediction["class_id"]] == prediction["class"]


def test_classify_list_prompts_are_their_own_class_names(client: TestClient) -> None:
    result = post(client, CLASSIFY, {"subject": "a cat", "subject_type": "text", "prompt": ["a cat", "a dog"]})
    assert result["top"] == "a cat" and {p["class"] for p in result["predictions"]} == {"a cat", "a dog"}


# --- the spec's error table ---


def assert_error(response, status: int, message_part: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message"}
    assert message_part in body["message"]


@pytest.mark.parametrize(
    "body",
    [{}, {"image": "not an object"}, {"image": {"value": "no type"}}, {"image": [1, 2]}],
)
def test_validation_errors_are_422_with_detail(client: TestClient, body: dict) -> None:
    response = client.post(EMBED_IMAGE, json=body)
    assert response.status_code == 422 and "detail" in response.json()


def test_missing_text_is_422(client: TestClient) -> None:
    response = client.post(EMBED_TEXT, json={"txt": "typo"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "text"]


@pytest.mark.parametrize(
    "image,cause",
    [
        ({"type": "base64", "value": "%%% not base64 %%%"}, "not valid base64"),
        ({"type": "base64", "value": b64(b"plain text, not an image")}, "not an image"),
        ({"type": "base64", "value": ""}, "empty"),
        ({"type": "base64", "value": b64(JPEG[: len(JPEG) // 3])}, "truncated"),
        ({"type": "numpy", "value": "gASV"}, "numpy image inputs are disabled"),
        ({"type": "pil", "value": "x"}, "unsupported image type"),
        ({"type": "url", "value": "ftp://127.0.0.1/cat.jpg"}, "only http and https"),
        ({"type": "url", "value": "http://127.0.0.1:9/cat.jpg"}, "could not be fetched"),
    ],
)
def test_unloadable_images_are_400(client: TestClient, image: dict, cause: str) -> None:
    response = client.post(EMBED_IMAGE, json={"image": image})
    assert_error(response, 400, "Could not load input image. Cause: ")
    assert cause in response.json()["message"]


def test_one_bad_image_in_a_list_fails_the_request_with_400(client: TestClient) -> None:
    response = client.post(EMBED_IMAGE, json={"image": [image_object(JPEG), {"type": "base64", "value": "!!"}]})
    assert_error(response, 400, "not valid base64")


def test_unknown_model_is_400_naming_valid_ids(client: TestClient) -> None:
    response = client.post(EMBED_TEXT, json={"text": "a", "perception_encoder_version_id": "PE-Core-X99"})
    assert_error(response, 400, "PE-Core-X99")
    assert "PE-Core-L14-336" in response.json()["message"]


@pytest.mark.parametrize(
    "route,body",
    [
        (EMBED_TEXT, {"text": ["a"] * (TEST_MAX_BATCH + 1)}),
        (EMBED_IMAGE, {"image": [image_object(PNG)] * (TEST_MAX_BATCH + 1)}),
        (COMPARE, {"subject": "a", "subject_type": "text", "prompt": ["b"] * TEST_MAX_BATCH}),
    ],
)
def test_too_many_items_is_413(client: TestClient, route: str, body: dict) -> None:
    assert_error(client.post(route, json=body), 413, f"at most {TEST_MAX_BATCH}")


def test_batch_at_the_limit_is_accepted(client: TestClient) -> None:
    assert len(post(client, EMBED_TEXT, {"text": ["a"] * TEST_MAX_BATCH})["embeddings"]) == TEST_MAX_BATCH


@pytest.mark.parametrize(
    "route,body",
    [
        (EMBED_TEXT, {"text": []}),
        (EMBED_IMAGE, {"image": []}),
        (COMPARE, {"subject": "a", "subject_type": "text", "prompt": []}),
        (COMPARE, {"subject": "a", "subject_type": "text", "prompt": {"x": {"type": "base64", "value": "a"}}}),
    ],
)
def test_empty_or_mistyped_prompts_are_400(client: TestClient, route: str, body: dict) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 400 and response.json()["message"]


def test_unexpected_failure_is_500_without_details(client: TestClient, encoder: PEEncoder, monkeypatch) -> None:
    def broken(texts):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(encoder, "embed_texts", broken)
    # Same app and state; this client answers as a real server would instead of re-raising.
    fresh = {"text": "a text no test has embedded, so the cache cannot answer"}
    response = TestClient(client.app, raise_server_exceptions=False).post(EMBED_TEXT, json=fresh)
    assert response.status_code == 500 and response.json() == {"message": "Internal error."}


def test_health_and_ready_report_model(client: TestClient) -> None:
    expected = expected_auto()
    for route in ("/health", "/ready"):
        body = client.get(route).json()
        assert body["ready"] is True and body["random_weights"] is True
        towers = body["models"][0].pop("towers")
        assert body["models"][0] == {
            "model": "PE-Core-T16-384",
            "dim": 512,
            "device": "cpu",
            "image_precision": expected["image"][1],
            "text_precision": expected["text"][1],
            "weights": "random",
            "random_weights": True,
        }
        # The runtime and precision per tower, with the measured cosine to torch fp32 that let it serve.
        for kind, (runtime, precision) in expected_auto().items():
            assert (towers[kind]["runtime"], towers[kind]["precision"]) == (runtime, precision)
            assert towers[kind]["cosine_to_fp32"] >= parity_floor(kind)
    assert client.get("/ready").status_code == 200


def test_openapi_documents_every_route_with_examples(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for route in (EMBED_IMAGE, EMBED_TEXT, COMPARE, CLASSIFY):
        operation = schema["paths"][route]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert schema["components"]["schemas"][ref].get("examples"), route
    assert client.get("/docs").status_code == 200
