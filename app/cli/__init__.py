"""The `pe-search` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.args import print_json
from app.cli.collection_tools import add_collection_tools
from app.cli.index_commands import add_commands, load_encoder
from app.cli.ops_commands import add_ops_commands
from app.model.variants import VARIANTS
from app.runtime.process import configure_logging
from app.settings import Settings

if TYPE_CHECKING:
    import numpy as np


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v for k in ("model", "weights", "device", "host", "port") if (v := getattr(args, k, None)) is not None
    }
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.api.app import create_app

    # uvicorn's access log would print query strings, api_key included; app.access logs instead.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def _emit(model: str, inputs: Sequence[str], vectors: np.ndarray) -> None:
    json.dump(
        {"model": model, "dim": int(vectors.shape[1]), "inputs": list(inputs), "embeddings": vectors.tolist()},
        sys.stdout,
    )
    sys.stdout.write("\n")


def cmd_embed_text(args: argparse.Namespace, settings: Settings) -> int:
    encoder = load_encoder(settings, towers=("text",))
    _emit(encoder.variant.version_id, args.text, encoder.embed_texts(args.text))
    return 0


def cmd_embed_image(args: argparse.Namespace, settings: Settings) -> int:
    from app.errors import ImageLoadError
    from app.media.decode import decode_image

    images = []
    for path in args.path:
        try:
            images.append(decode_image(Path(path).read_bytes()))
        except (OSError, ImageLoadError) as exc:
            print(f"pe-search: {path}: {exc}", file=sys.stderr)
            return 2
    encoder = load_encoder(settings, towers=("image",))
    _emit(encoder.variant.version_id, args.path, encoder.embed_images(images))
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from app.model.weights import cached_hub_checkpoint

    rows = [
        {
            "id": v.version_id,
            "open_clip": v.open_clip_name,
            "dim": v.dim,
            "image_size": v.image_size,
            "context_length": v.context_length,
            "default": v.version_id == settings.model,
            "cached": cached_hub_checkpoint(v, settings.cache_dir) is not None,
        }
        for v in VARIANTS.values()
    ]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'model':<18}{'open_clip name':<22}{'dim':>5}{'input':>7}{'ctx':>5}  cached")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        cached = "yes" if r["cached"] else "no"
        sizes = f"{r['dim']:>5}{r['image_size']:>7}{r['context_length']:>5}"
        print(f"{r['id']:<18}{r['open_clip']:<22}{sizes}  {cached}{mark}")
    return 0


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    from app.model.variants import get_variant
    from app.model.weights import fetch_hub_checkpoint

    print(fetch_hub_checkpoint(get_variant(settings.model), settings.cache_dir))
    if args.export:
        return cmd_export_model(args, settings.model_copy(update={"weights": "hub"}))
    return 0


def cmd_export_model(args: argparse.Namespace, settings: Settings) -> int:
    """Export (or check) the model's ONNX towers in the cache, so that later starts load them without torch."""
    encoder = load_encoder(settings, towers=("image", "text"))
    entry = encoder.loader.entry()
    print_json({"entry": str(entry.path), "parity": entry.manifest["parity"], "towers": encoder.info.towers})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pe-search", description="Image embeddings and search on PE-Core.")
    model_opts = argparse.ArgumentParser(add_help=False)
    model_opts.add_argument("--model", help="PE-Core variant (default: PE_SEARCH_MODEL or PE-Core-L14-336)")
    model_opts.add_argument("--weights", help="hub, a checkpoint path, or random (default: PE_SEARCH_WEIGHTS or hub)")
    model_opts.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[model_opts], help="run the HTTP service")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    serve.add_argument("--port", type=int, help="port (default 9001)")
    serve.set_defaults(func=cmd_serve)

    text = sub.add_parser("embed-text", parents=[model_opts], help="embed texts, JSON on stdout")
    text.add_argument("text", nargs="+")
    text.set_defaults(func=cmd_embed_text)

    image = sub.add_parser("embed-image", parents=[model_opts], help="embed image files, JSON on stdout")
    image.add_argument("path", nargs="+")
    image.set_defaults(func=cmd_embed_image)

    models = sub.add_parser("models", help="list the PE-Core variants and which are cached locally")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=cmd_models)

    download = sub.add_parser(
        "download", parents=[model_opts], help="fetch a model's weights into the cache (e.g. at image build)"
    )
    download.add_argument(
        "--no-export", dest="export", action="store_false", help="only the weights, not the ONNX export of them"
    )
    download.set_defaults(func=cmd_download)

    export = sub.add_parser(
        "export-model",
        parents=[model_opts],
        help="export the model's towers to ONNX in the cache (done on first use otherwise) and check them",
    )
    export.set_defaults(func=cmd_export_model)

    add_commands(sub, model_opts)
    add_collection_tools(sub)
    add_ops_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        configure_logging(settings.log_level)
        return args.func(args, settings)
    except Exception as exc:  # noqa: BLE001 - a CLI prints one line, not a traceback
        from pydantic import ValidationError

        from app.errors import PESearchError

        if isinstance(exc, (PESearchError, ValidationError, OSError)):
            print(f"pe-search: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
