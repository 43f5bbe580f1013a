"""The export cache: what `auto` runs where, entries checked before they are trusted, and a later process
that loads the exported towers without torch."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.model import loading
from app.model.encoder import PEEncoder
from app.model.export_cache import ExportCache, ExportKey, check_entry, weights_identity
from app.model.loading import plan_runtime
from app.model.variants import get_variant
from tests.support.constants import TEST_MODEL
from tests.support.runtimes import expected_auto

VARIANT = get_variant(TEST_MODEL)
BOTH = {"onnx": True, "openvino": True}
ONNX_ONLY = {"onnx": True, "openvino": False}


def _plan(kind: str, **overrides: object) -> str:
    args: dict = {"runtime": "auto", "requested": "auto", "device": "cpu", "installed": BOTH, "native_bf16": False}
    args.update(overrides)
    return plan_runtime(kind, **args)


def test_auto_runs_onnx_on_the_cpu_bf16_where_native_and_torch_on_cuda() -> None:
    assert (_plan("image"), _plan("text")) == ("onnx", "onnx")
    # Native bf16: OpenVINO's bf16 where installed; else torch's for images, ONNX Runtime fp32 for text
    # (torch's bf16 text is slower than its fp32).
    assert (_plan("image", native_bf16=True), _plan("text", native_bf16=True)) == ("openvino", "openvino")
    assert _plan("image", native_bf16=True, installed=ONNX_ONLY) == "torch"
    assert _plan("text", native_bf16=True, installed=ONNX_ONLY) == "onnx"
    assert _plan("image", requested="bf16") == "openvino"
    assert _plan("image", requested="int8") == "onnx"
    assert _plan("image", requested="fp32", native_bf16=True) == "onnx"
    assert _plan("image", device="cuda") == _plan("text", device="cuda") == "torch"
    assert _plan("text", installed={"onnx": False, "openvino": False}) == "torch"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"runtime": "onnx", "requested": "bf16"}, "no bf16"),
        ({"runtime": "openvino", "installed": ONNX_ONLY}, "needs openvino"),
        ({"runtime": "onnx", "device": "cuda"}, "runs on the CPU"),
        ({"requested": "fp16"}, "fp16 is for CUDA"),
        ({"runtime": "openvino", "requested": "int8"}, "int8 runs on ONNX Runtime"),
    ],
)
def test_impossible_runtime_requests_are_refused_with_the_reason(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _plan("image", **overrides)


def test_a_later_process_loads_the_export_without_importing_torch(encoder: PEEncoder) -> None:
    """What makes the CLI and start-up fast: the cached entry serves, torch is never imported."""
    script = (
        "import sys, json\n"
        "from app.model.encoder import PEEncoder\n"
        "from app.model.variants import get_variant\n"
        f"e = PEEncoder(get_variant({TEST_MODEL!r}), weights='random', device='cpu', image_precision='fp32').load()\n"
        "v = e.embed_texts(['a cat', 'two dogs'])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules,"
        " 'runtimes': e.runtimes, 'text': v.tolist()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["open_clip"] is False
    assert result["runtimes"] == {"image": "onnx", "text": expected_auto()["text"][0]}
    np.testing.assert_allclose(np.array(result["text"]), encoder.embed_texts(["a cat", "two dogs"]), atol=1e-6)


@pytest.fixture()
def entry_copy(encoder: PEEncoder, tmp_path: Path) -> Iterator[tuple[Path, ExportKey]]:
    """A private copy of the session's export entry, to damage: hard links (no disk), each file made a
    real copy by `_damage` before it is changed, so the session's entry stays whole."""
    entry = encoder.loader.entry()
    key = ExportKey(**json.loads((entry.path / "manifest.json").read_text())["key"])
    root = tmp_path / "exports"
    shutil.copytree(entry.path, root / key.folder, copy_function=os.link, ignore=shutil.ignore_patterns("openvino"))
    yield root, key
    shutil.rmtree(root, ignore_errors=True)


def _damage(path: Path, how: str) -> None:
    if how != "missing":  # never write through a hard link into the session's entry
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    if how == "truncated":
        with path.open("r+b") as file:
            file.truncate(path.stat().st_size // 2)
    elif how == "overwritten":
        with path.open("r+b") as file:
            file.write(b"\0" * 64)
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "overwritten", "missing"])
@pytest.mark.parametrize("name", ["text.onnx", "image.onnx", "tokenizer.json", "probe.npz"])
def test_a_damaged_entry_is_not_trusted(entry_copy: tuple[Path, ExportKey], name: str, how: str) -> None:
    root, key = entry_copy
    assert check_entry(root / key.folder, key) is not None
    _damage(root / key.folder / name, how)
    assert check_entry(root / key.folder, key) is None


def test_an_entry_for_other_weights_or_versions_is_not_trusted(entry_copy: tuple[Path, ExportKey]) -> None:
    root, key = entry_copy
    for other in (replace(key, weights="sha256:" + "0" * 64), replace(key, torch="0.0"), replace(key, opset=17)):
        assert check_entry(root / key.folder, other) is None
        assert other.folder != key.folder  # and it would never be looked for there
    (root / key.folder / "manifest.json").unlink()  # a link: replaced, not written through
    (root / key.folder / "manifest.json").write_text("{not json")
    assert check_entry(root / key.folder, key) is None


def test_a_damaged_entry_is_rebuilt_and_serves_the_same_embeddings(
    entry_copy: tuple[Path, ExportKey], encoder: PEEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    root, key = entry_copy
    _damage(root / key.folder / "text.onnx", "truncated")
    caplog.set_level(logging.INFO, logger="app.model")
    rebuilt = PEEncoder(VARIANT, weights="random", device="cpu", export_dir=root).load(["text"])
    assert "damaged: rebuilding" in caplog.text and "Exporting" in caplog.text
    assert ExportCache(root).lookup(key) is not None
    np.testing.assert_allclose(rebuilt.embed_texts(["a red car"]), encoder.embed_texts(["a red car"]), atol=1e-6)


def test_an_export_under_the_parity_guard_is_refused_and_torch_serves(
    torch_encoder: PEEncoder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(loading, "PARITY_GUARD", 1.5)  # no export can reach it
    caplog.set_level(logging.WARNING, logger="app.model")
    guarded = PEEncoder(VARIANT, weights="random", device="cpu").load(["text"])
    assert guarded.runtimes["text"] == "torch" and "under the 1.50000 guard: torch serves" in caplog.text
    np.testing.assert_allclose(guarded.embed_texts(["a cat"]), torch_encoder.embed_texts(["a cat"]), atol=1e-6)


def test_weights_are_identified_by_content_not_path(tmp_path: Path) -> None:
    first, same, other = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    first.write_bytes(b"weights one")
    same.write_bytes(b"weights one")
    other.write_bytes(b"weights two")

    def identity(path: Path) -> str | None:
        return weights_identity(VARIANT, str(path), hub_cache=None, memo_dir=tmp_path / "memo")

    assert identity(first) == identity(same) != identity(other)
    assert identity(first) == identity(first)  # from the memo now
    first.write_bytes(b"weights changed")  # new size and mtime: hashed again
    assert identity(first) not in (identity(same), None)
    assert identity(tmp_path / "missing.pt") is None
