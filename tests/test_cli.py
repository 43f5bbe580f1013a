"""The pe-search command line, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.media.decode import decode_image
from app.model.encoder import PEEncoder
from tests.support.images import encode, photo

MODEL_ARGS = ["--model", "PE-Core-T16-384", "--weights", "random", "--device", "cpu"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_variants_dims_and_cache(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PE_SEARCH_CACHE_DIR", str(tmp_path))
    code, out, _ = run(capsys, "models", "--json")
    rows = {row["id"]: row for row in json.loads(out)}
    assert code == 0
    assert {k: v["dim"] for k, v in rows.items()} == {
        "PE-Core-T16-384": 512,
        "PE-Core-S16-384": 512,
        "PE-Core-B16-224": 1024,
        "PE-Core-L14-336": 1024,
        "PE-Core-G14-448": 1280,
    }
    assert not any(row["cached"] for row in rows.values())
    assert rows["PE-Core-L14-336"]["default"]
    code, out, _ = run(capsys, "models")
    assert code == 0 and "PE-Core-G14-448" in out and "(default)" in out


@pytest.mark.slow
def test_embed_text_and_image_print_json(capsys, tmp_path: Path, encoder: PEEncoder) -> None:
    code, out, _ = run(capsys, "embed-text", *MODEL_ARGS, "a cat", "a dog")
    result = json.loads(out)
    assert code == 0 and result["model"] == "PE-Core-T16-384" and result["dim"] == 512
    np.testing.assert_allclose(result["embeddings"], encoder.embed_texts(["a cat", "a dog"]), atol=1e-6)

    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(photo(300, 200, seed=4), "JPEG"))
    code, out, _ = run(capsys, "embed-image", *MODEL_ARGS, str(path))
    result = json.loads(out)
    assert code == 0 and result["inputs"] == [str(path)]
    np.testing.assert_allclose(result["embeddings"], encoder.embed_images([decode_image(path.read_bytes())]), atol=1e-6)


def test_embed_image_reports_a_bad_file(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    code, out, err = run(capsys, "embed-image", *MODEL_ARGS, str(bad))
    assert code == 2 and out == "" and "notes.jpg" in err and "not an image" in err


def test_unknown_model_is_a_one_line_error(capsys) -> None:
    code, _, err = run(capsys, "embed-text", "--model", "PE-Core-X99", "a cat")
    assert code == 2 and "unknown model" in err and "Traceback" not in err


@pytest.mark.slow
def test_index_commands_end_to_end(capsys, tmp_path: Path, monkeypatch) -> None:
    from index.db import head_revision
    from tests.support.ingest import make_folder

    monkeypatch.setenv("PE_SEARCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PE_SEARCH_WEIGHTS", "random")
    monkeypatch.setenv("PE_SEARCH_MODEL", "PE-Core-T16-384")
    paths = make_folder(tmp_path / "photos", count=4)
    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0 and f"revision {head_revision()}" in out

    code, out, _ = run(capsys, "ingest", str(tmp_path / "photos"), "--collection", "pics", "--json", "--quiet")
    summary = json.loads(out)
    assert code == 0 and (summary["added"], summary["failed"]) == (4, 2)
    code, out, _ = run(capsys, "ingest", str(tmp_path / "photos"), "--collection", "pics", "--quiet")
    assert code == 0 and out.startswith("0 added, 4 unchanged") and "failed: " in out

    code, out, _ = run(capsys, "collections", "--json")
    [info] = json.loads(out)
    assert (info["name"], info["count"], info["model"]) == ("pics", 4, "PE-Core-T16-384")

    code, out, _ = run(capsys, "search", "--image", str(paths[2]), "-k", "2", "--collection", "pics", "--json")
    hits = json.loads(out)
    assert code == 0 and hits[0]["uri"] == str(paths[2].resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    code, out, _ = run(capsys, "search", "--id", str(hits[0]["id"]), "--collection", "pics", "--json")
    assert json.loads(out)[0]["id"] == hits[0]["id"]
    code, out, _ = run(capsys, "search", "a", "photo", "-k", "3", "--collection", "pics")
    assert code == 0 and len(out.strip().splitlines()) == 3

    code, out, _ = run(capsys, "reindex", "--collection", "pics", "--index-type", "hnsw")
    assert code == 0 and "hnsw" in out
    code, out, _ = run(capsys, "reindex", "--collection", "pics", "--param", "ef_search=64", "--param", "M=16")
    assert code == 0
    code, out, _ = run(capsys, "collections", "--json")
    assert {k: json.loads(out)[0]["index_params"][k] for k in ("ef_search", "M")} == {"ef_search": 64, "M": 16}
    code, _, err = run(capsys, "reindex", "--collection", "pics", "--param", "nprobe=8")
    assert code == 2 and "unknown index parameter 'nprobe'; hnsw takes M, ef_construction, ef_search" in err
    code, _, err = run(capsys, "reindex", "--collection", "pics", "--index-type", "ivfpq", "--param", "opq=maybe")
    assert code == 2 and "opq is true or false" in err
    code, out, _ = run(capsys, "delete", str(hits[0]["id"]), "999999")
    assert code == 1 and "1 deleted, 1 not found" in out
    code, out, _ = run(capsys, "stats")
    stats = json.loads(out)
    assert stats["collections"][0]["count"] == 3 and stats["failures"] == {"pics": 2}

    code, _, err = run(capsys, "search", "x", "--collection", "nope")
    assert code == 2 and "No collection named 'nope'" in err
    code, _, err = run(capsys, "ingest", str(tmp_path / "missing"))
    assert code == 2 and "not a folder" in err


def test_search_takes_the_filters_and_limits_of_post_search(capsys, tmp_path: Path, monkeypatch) -> None:
    """`pe-search search` runs the server's SearchService: metadata and uri filters, min score, the top-k cap."""
    monkeypatch.setenv("PE_SEARCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PE_SEARCH_WEIGHTS", "random")
    monkeypatch.setenv("PE_SEARCH_MODEL", "PE-Core-T16-384")
    labels = ["dog", "cat", "dog", "bird", "cat", "dog"]
    rows = ["path,label,year"]
    for i, label in enumerate(labels):
        path = tmp_path / "photos" / f"{label}{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(photo(96, 64, seed=40 + i), "PNG"))
        rows.append(f"photos/{path.name},{label},{2020 + i % 2}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    code, out, _ = run(capsys, "ingest", "--manifest", str(tmp_path / "manifest.csv"), "--quiet", "--json")
    assert code == 0 and json.loads(out)["added"] == 6

    def search(*argv: str) -> list[dict]:
        code, out, err = run(capsys, "search", *argv, "--json")
        assert code == 0, err
        return json.loads(out)

    dogs = search("an", "animal", "--filter", "label=dog")
    assert sorted(h["metadata"]["label"] for h in dogs) == ["dog", "dog", "dog"]
    either = search("an", "animal", "--filter", "label=dog", "--filter", "label=bird", "--filter", "year=2021")
    assert {(h["metadata"]["label"], h["metadata"]["year"]) for h in either} == {("dog", "2021"), ("bird", "2021")}
    by_uri = search("an", "animal", "--uri-prefix", str((tmp_path / "photos" / "cat").resolve()))
    assert sorted(Path(h["uri"]).name for h in by_uri) == ["cat1.png", "cat4.png"]
    exact = search("--image", str(tmp_path / "photos" / "bird3.png"), "--min-score", "0.999")
    assert [Path(h["uri"]).name for h in exact] == ["bird3.png"]

    monkeypatch.setenv("PE_SEARCH_MAX_TOP_K", "2")
    assert len(search("an", "animal", "-k", "10")) == 2
    code, _, err = run(capsys, "search", "an", "animal", "--filter", "no-equals-sign")
    assert code == 2 and "--filter takes KEY=VALUE" in err
    with pytest.raises(SystemExit):  # argparse refuses it before anything runs
        main(["search", "an", "animal", "-k", "0"])


def test_an_unusable_data_dir_is_a_clear_error(capsys, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data dir should be")
    monkeypatch.setenv("PE_SEARCH_DATA_DIR", str(blocker / "data"))
    code, _, err = run(capsys, "collections")
    assert code == 2 and "is not a writable folder" in err and "PE_SEARCH_DATA_DIR" in err
