"""Whole-process timings of `pe-search` commands, as a user meets them: interpreter start, imports,
model load and the work, wall clock from the outside.

Every run is a fresh `python -m app.cli ...` with random weights on the CPU and a shared export cache
warmed first (one `export-model`), so no run pays for the one-time ONNX export. Scenarios:
  stats     `stats` on a collection of --files small JPEGs (no model)
  search    `search "a red car"` on that collection (text tower load + one query)
  reingest  `ingest DIR` of those files again: nothing new, so a no-op
  ready     `serve` until GET /ready answers 200
  embed     `ingest DIR` of --mixed photos (320-2000 px, 1 in 6 a PNG) into an empty data dir,
            against `naive`: a script doing what a home-made tool would (open_clip, random init,
            open_clip's transform, batches of 8 under no_grad, np.save)
Each runs with PE_SEARCH_RUNTIME=auto (ours) and =torch (the baseline); best and median of --repeats,
the runs of each scenario interleaved so that a noisy neighbour spreads over all of them.

    python -m bench cli
    python -m bench cli --model PE-Core-T16-384 --repeats 1 --files 50 --mixed 12
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from bench.machine import describe
from bench.server import free_port

ROOT = Path(__file__).resolve().parents[1]
# No proxy, whatever the environment says: every request goes straight to 127.0.0.1.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MIXED_SIZES = [(320, 240), (640, 480), (1280, 720), (800, 1200), (1600, 1200), (2000, 1500), (1024, 1024)]

NAIVE = """
import sys, pathlib
import numpy as np, open_clip, torch
from PIL import Image
name, size, folder, out = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
model = open_clip.create_model(name, pretrained=None).eval()
preprocess = open_clip.image_transform(size, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                       resize_mode="squash", interpolation="bilinear")
paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
features = []
with torch.no_grad():
    for start in range(0, len(paths), 8):
        batch = torch.stack([preprocess(Image.open(p)) for p in paths[start:start + 8]])
        features.append(model.encode_image(batch, normalize=True).numpy())
np.save(out, np.concatenate(features))
"""


def make_images(folder: Path, sizes: list[tuple[int, int]], png_every: int = 0) -> None:
    """Photo-like files (gradients, shapes, sensor noise) that a JPEG encoder cannot shrink to nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(sizes))
    for i, (width, height) in enumerate(sizes):
        y, x = np.ogrid[0:height, 0:width]
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([127 + 100 * np.sin(x / width * 3 + p) * np.cos(y / height * 2 + p) for p in phase], -1)
        noisy = base + rng.normal(0, 6, (height, width, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
            box = (x0, y0, x0 + width // 5, y0 + height // 5)
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        if png_every and i % png_every == png_every - 1:
            image.save(folder / f"img{i:04d}.png")
        else:
            image.save(folder / f"img{i:04d}.jpg", "JPEG", quality=88)


def small_sizes(n: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(1)
    return [(int(w), int(h)) for w, h in rng.integers(48, 320, (n, 2))]


def mixed_sizes(n: int) -> list[tuple[int, int]]:
    return [MIXED_SIZES[i % len(MIXED_SIZES)] for i in range(n)]


def base_env(model: str, export_dir: Path) -> dict[str, str]:
    # Whatever PE_SEARCH_* the caller's shell holds must not change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PE_SEARCH_")}
    return env | {
        "PE_SEARCH_WEIGHTS": "random",
        "PE_SEARCH_MODEL": model,
        "PE_SEARCH_DEVICE": "cpu",
        "PE_SEARCH_EXPORT_DIR": str(export_dir.resolve()),
        "HF_HUB_OFFLINE": "1",
    }


def timed(command: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"s": None, "rc": None, "error": f"timed out after {timeout:.0f} s"}
    seconds = time.perf_counter() - began
    result: dict[str, Any] = {"s": round(seconds, 3), "rc": out.returncode}
    if out.returncode != 0:
        result["error"] = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][-300:]
    else:
        # `ingest --json`'s own summary (its in-process seconds, beside the wall clock); other commands print no dict.
        with contextlib.suppress(ValueError, AttributeError):
            inner = {k: v for k, v in json.loads(out.stdout).items() if k in ("added", "unchanged", "seconds")}
            result |= {"inner": inner} if inner else {}
    return result


def ready_time(env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Seconds from spawning `serve` to the first 200 of /ready, polled every 50 ms."""
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryFile() as log:
        began = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while time.perf_counter() - began < timeout:
                if process.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace").strip().splitlines() or [""]
                    return {"s": None, "rc": process.returncode, "error": tail[-1][-300:]}
                try:
                    with DIRECT.open(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                        if response.status == 200:
                            return {"s": round(time.perf_counter() - began, 3), "rc": 0}
                except OSError:  # refused while it starts, 503 while the model loads
                    pass
                time.sleep(0.05)
            return {"s": None, "rc": None, "error": f"not ready after {timeout:.0f} s"}
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r["s"] for r in runs if r.get("rc") == 0 and r["s"] is not None]
    summary: dict[str, Any] = {"runs": runs}
    if good:
        summary |= {"best_s": min(good), "median_s": round(statistics.median(good), 3)}
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        summary["error"] = errors[0]
    return summary


def setup(work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Path]:
    paths = {"small": work / "small", "mixed": work / "mixed", "collection": work / "collection-data"}
    make_images(paths["small"], small_sizes(args.files))
    make_images(paths["mixed"], mixed_sizes(args.mixed), png_every=6)
    warm = timed([sys.executable, "-m", "app.cli", "export-model"], env, args.timeout)
    print(f"export cache warmed in {warm['s']} s (rc {warm['rc']})")
    collection_env = env | {"PE_SEARCH_DATA_DIR": str(paths["collection"])}
    first = timed([sys.executable, "-m", "app.cli", "ingest", str(paths["small"]), "--quiet", "--json"],
                  collection_env, args.timeout)  # fmt: skip
    print(f"collection of {args.files} small JPEGs ingested in {first['s']} s (rc {first['rc']})")
    for name, result in (("export-model", warm), ("first ingest", first)):
        if result["rc"] != 0:
            raise SystemExit(f"{name} failed: {result.get('error')}")
    return paths


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from app.model.variants import get_variant

    variant = get_variant(args.model)
    env = base_env(args.model, args.export_dir)
    paths = setup(work, args, env)
    cli = [sys.executable, "-m", "app.cli"]
    collection = {"PE_SEARCH_DATA_DIR": str(paths["collection"])}
    commands = {
        "stats": (cli + ["stats"], collection),
        "search": (cli + ["search", "a red car"], collection),
        "reingest": (cli + ["ingest", str(paths["small"]), "--quiet", "--json"], collection),
        "embed": (cli + ["ingest", str(paths["mixed"]), "--quiet", "--json"], {}),
    }
    naive = [sys.executable, "-c", NAIVE, variant.open_clip_name, str(variant.image_size), str(paths["mixed"])]
    runtimes = args.runtimes.split(",")
    results: dict[str, dict[str, Any]] = {}
    for scenario in ("stats", "search", "reingest", "ready", "embed"):
        runs: dict[str, list[dict[str, Any]]] = {
            r: [] for r in [*runtimes, *(["naive"] if scenario == "embed" else [])]
        }
        for repeat in range(args.repeats):
            for who in runs:
                fresh = work / f"data-{scenario}-{who}-{repeat}"  # embed: an empty data dir every run
                run_env = env | {"PE_SEARCH_RUNTIME": who, "PE_SEARCH_DATA_DIR": str(fresh)}
                if who == "naive":
                    fresh.mkdir()
                    runs[who].append(timed([*naive, str(fresh / "naive.npy")], env, args.timeout))
                elif scenario == "ready":
                    runs[who].append(ready_time(run_env | collection, args.timeout))
                else:
                    command, extra = commands[scenario]
                    runs[who].append(timed(command, run_env | extra, args.timeout))
                shutil.rmtree(fresh, ignore_errors=True)
        results[scenario] = {who: summarise(r) for who, r in runs.items()}
        print(
            f"{scenario}: " + ", ".join(f"{w} {s.get('best_s', s.get('error'))}" for w, s in results[scenario].items())
        )
    return {"model": args.model, "files": args.files, "mixed": args.mixed, "repeats": args.repeats, "results": results}


def print_report(report: dict[str, Any], runtimes: list[str]) -> None:
    ours, base = runtimes[0], runtimes[-1]
    header = " | ".join(f"{r} best s | {r} median s" for r in runtimes)
    print(f"\n{report['model']}, whole process, wall clock ({report['repeats']} runs)\n")
    print(f"| scenario | {header} | {base} / {ours} | naive / {ours} |")
    print("|---|" + "---:|" * (2 * len(runtimes) + 2))
    for scenario, by in report["results"].items():
        cells = " | ".join(f"{_cell(by[r], 'best_s')} | {_cell(by[r], 'median_s')}" for r in runtimes)
        print(f"| {scenario} | {cells} | {_ratio(by.get(base), by[ours])} | {_ratio(by.get('naive'), by[ours])} |")
    naive = report["results"]["embed"]["naive"]
    print(
        f"\nnaive script, {report['mixed']} files: best {_cell(naive, 'best_s')} s, median {_cell(naive, 'median_s')} s"
    )
    for scenario, by in report["results"].items():
        for who, summary in by.items():
            if "error" in summary:
                print(f"error: {scenario} {who}: {summary['error']}")


def _cell(summary: dict[str, Any], key: str) -> str:
    return f"{summary[key]:.2f}" if key in summary else "failed"


def _ratio(slow: dict[str, Any] | None, fast: dict[str, Any]) -> str:
    if not slow or "best_s" not in slow or "best_s" not in fast:
        return ""
    return f"x{slow['best_s'] / fast['best_s']:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="PE-Core-B16-224")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=1000, help="small JPEGs in the collection (reingest)")
    parser.add_argument("--mixed", type=int, default=96, help="photos in the embed scenario")
    parser.add_argument("--runtimes", default="auto,torch", help="PE_SEARCH_RUNTIME values: ours first, baseline last")
    parser.add_argument("--export-dir", type=Path, default=Path("bench/results/.exports"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any one command may take")
    parser.add_argument("--out", default="bench/results/cli.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pe-bench-cli-"))
    load_before = os.getloadavg()  # with the end's: a run a neighbour disturbed shows in its own file
    try:
        report = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"] = describe()
    report["load_average"] = {"start": load_before, "end": os.getloadavg()}
    print_report(report, args.runtimes.split(","))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    failed = any("error" in s for by in report["results"].values() for s in by.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
