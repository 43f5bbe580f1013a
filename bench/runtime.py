"""CPU runtimes per tower: items/s, GMAC/s, share of the machine's fp32 GEMM ceiling, cosine to torch fp32.

One process, one variant, the same random weights everywhere (the seed is fixed, and every exported
runtime loads the same export entry). Each row calls a `Tower` directly on a ready numpy batch, so
preprocessing, tokenizing and normalisation are not in the time. Rows: torch eager fp32 (the reference),
torch bf16 (native-bf16 CPUs only), ONNX Runtime fp32, ONNX Runtime int8 (when app/model/quantize.py
exists), OpenVINO fp32 and bf16 (when openvino is installed). Then a workers sweep on ONNX Runtime:
one session on all cores against N Python threads sharing one single-threaded session.

MACs per item are counted by torch's FlopCounterMode on the fp32 module at batch 1, with the math
attention kernel so that attention's two matmuls are counted too (CPU SDPA kernels are not): B16's
image tower counts 17.80 GMAC at 224, close to params x tokens + 2 x layers x tokens^2 x width.

    python -m bench runtime                                   # PE-Core-B16-224, image 1,8 / text 1,16
    python -m bench runtime --model PE-Core-T16-384 --repeats 1 --min-seconds 0.1
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe

TEXTS = [
    f"a photo of {thing} {place}"
    for thing in ("a dog", "two cats", "a red car", "an old man", "a bowl of soup", "a mountain", "a bicycle")
    for place in ("at night", "on a beach", "in a city")
]
MAC_FORMULA = (
    "MACs/item = FlopCounterMode(fp32 module, batch 1, SDPBackend.MATH) / 2: every matmul, linear and conv, "
    "attention included; ~ params x tokens + 2 x layers x tokens^2 x width for a ViT"
)


def gemm_rate(n: int = 2048, repeats: int = 7) -> float:
    """The fp32 rate of one large sgemm (numpy's BLAS, all its threads), in GMAC/s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b  # the first call pays for thread start-up and page faults
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return n**3 / best / 1e9


def gemm_ceiling() -> float:
    """`gemm_rate` in a child process, so that numpy's BLAS thread pool (which spins after a call)
    never shares this process's cores with the pools of torch and the runtimes being timed."""
    code = "from bench.runtime import gemm_rate; print(gemm_rate())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    return float(out.stdout.strip().splitlines()[-1])


def count_macs(module: Any, example: np.ndarray) -> float:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # Not under no_grad: the counter's module tracker asserts on parameters used without autograd.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(torch.from_numpy(example[:1]))
    return counter.get_total_flops() / 2


def per_call(call: Callable[[], Any], repeats: int, min_seconds: float) -> float:
    """Best seconds per call over `repeats` rounds, each long enough (`min_seconds`) to time reliably."""
    call()  # warm-up: allocations, kernel selection, OpenVINO's first-infer work
    began = time.perf_counter()
    call()
    loops = max(1, math.ceil(min_seconds / max(time.perf_counter() - began, 1e-6)))
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(loops):
            call()
        best = min(best, (time.perf_counter() - began) / loops)
    return best


def concurrent_rate(call: Callable[[], Any], items: int, workers: int, repeats: int, min_seconds: float) -> float:
    """Items/s of `workers` threads calling at once (ONNX Runtime releases the GIL while it runs)."""
    calls = max(2, math.ceil(min_seconds / per_call(call, 1, 0)))
    best = 0.0
    for _ in range(repeats):
        start = threading.Barrier(workers + 1)

        def worker(start: threading.Barrier) -> None:
            start.wait()
            for _ in range(calls):
                call()

        threads = [threading.Thread(target=worker, args=(start,)) for _ in range(workers)]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        best = max(best, workers * calls * items / (time.perf_counter() - began))
    return best


def configs(native_bf16: bool) -> tuple[list[tuple[str, str]], list[str]]:
    from app.model.onnx_towers import available

    chosen, notes = [("torch", "fp32")], []
    if native_bf16:
        chosen.append(("torch", "bf16"))
    else:
        notes.append("torch bf16 skipped: no native bf16 on this CPU (emulated bf16 is slower than fp32)")
    if available("onnx"):
        chosen.append(("onnx", "fp32"))
        if importlib.util.find_spec("app.model.quantize") is not None:
            chosen.append(("onnx", "int8"))
        else:
            notes.append("onnx int8 skipped: app/model/quantize.py (static quantisation) is not there yet")
    else:
        notes.append("onnx rows skipped: onnxruntime is not installed")
    if available("openvino"):
        chosen += [("openvino", "fp32"), ("openvino", "bf16")]
        if not native_bf16:
            notes.append("openvino bf16 on a CPU without native bf16: OpenVINO may run it emulated or in fp32")
    else:
        notes.append("openvino rows skipped: openvino is not installed")
    return chosen, notes


def workers_sweep(
    path: dict[str, Path], inputs: dict[tuple[str, int], np.ndarray], workers: int, repeats: int, min_seconds: float
) -> list[dict[str, Any]]:
    from app.model.onnx_towers import OrtTower
    from app.model.precision import TowerMode

    cores = os.cpu_count() or 1
    rows = []
    for kind, batch in (("image", 1), ("image", 8), ("text", 1)):
        # The batch-1 input tiled: the same item over and over costs the same as distinct ones.
        batch_input = np.repeat(inputs[(kind, 1)], batch, axis=0)
        alone = OrtTower(kind, path[kind], TowerMode("fp32"), threads=cores, spin=True)
        one = batch / per_call(partial(alone, batch_input), repeats, min_seconds)
        del alone
        shared = OrtTower(kind, path[kind], TowerMode("fp32"), threads=1, spin=False)
        many = concurrent_rate(partial(shared, batch_input), batch, workers, repeats, min_seconds)
        del shared
        for layout, rate in ((f"1 worker x {cores} threads", one), (f"{workers} workers x 1 thread", many)):
            row = {"tower": kind, "batch": batch, "layout": layout, "items_per_s": round(rate, 2)}
            rows.append(row | {"x_one_worker": round(rate / one, 2)})
    return rows


def measure(encoder: Any, runtime: str, mode: str, state: dict[str, Any], args: argparse.Namespace) -> list[dict]:
    """One runtime and precision: each tower loaded, then timed at each batch size against torch fp32."""
    from app.model.precision import min_cosine

    rows: list[dict[str, Any]] = []
    for kind in ("image", "text"):
        began = time.perf_counter()
        try:
            tower = encoder.tower(kind)
        except Exception as exc:  # noqa: BLE001 - one runtime failing to load must not end the others' rows
            rows.append({"tower": kind, "runtime": runtime, "requested": mode, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{kind} {runtime} {mode}: {rows[-1]['error']}")
            continue
        load_s = time.perf_counter() - began
        if (runtime, mode) == ("torch", "fp32"):
            state["macs"][kind] = count_macs(encoder.loader.torch_model().fp32(kind), state["inputs"][(kind, 1)])
        if (runtime, mode) == ("onnx", "fp32"):
            state["onnx_paths"][kind] = encoder.loader.entry().file(f"{kind}.onnx")
        for (input_kind, size), batch_input in state["inputs"].items():
            if input_kind != kind:
                continue
            rate = size / per_call(partial(tower, batch_input), args.repeats, args.min_seconds)
            out = tower(batch_input)
            cosine = min_cosine(state["reference"].setdefault((kind, size), out), out)
            gmacs = rate * state["macs"].get(kind, math.nan) / 1e9
            rows.append(
                {"tower": kind, "batch": size, "runtime": tower.runtime, "requested": mode,
                 "precision": tower.mode.precision, "load_s": round(load_s, 2), "items_per_s": round(rate, 2),
                 "gmac_per_s": round(gmacs, 1), "of_fp32_peak": round(gmacs / state["ceiling"], 3),
                 "cos_to_torch_fp32": round(cosine, 6)}
            )  # fmt: skip
            print(f"{kind:<6}{size:>3} {tower.runtime:<9}{tower.mode.precision:<5}{rate:>9.2f} items/s")
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.model.encoder import PEEncoder
    from app.model.precision import cpu_has_native_bf16
    from app.model.preprocess import probe_images
    from app.model.variants import get_variant

    variant = get_variant(args.model)
    ceiling = gemm_ceiling()
    print(f"fp32 GEMM ceiling (numpy sgemm 2048^3, best of 7): {ceiling:.1f} GMAC/s")
    chosen, notes = configs(cpu_has_native_bf16())
    state: dict[str, Any] = {"ceiling": ceiling, "inputs": {}, "reference": {}, "macs": {}, "onnx_paths": {}}
    rows: list[dict[str, Any]] = []
    for runtime, mode in chosen:
        encoder = PEEncoder(variant, weights="random", device="cpu", runtime=runtime, image_precision=mode,
                            text_precision=mode, export_dir=args.export_dir)  # fmt: skip
        if not state["inputs"]:  # torch fp32 comes first: its tokenizer makes every row's token ids
            # Batch 1 always: the MAC count and the workers sweep run on it.
            for size in sorted({1, *_ints(args.image_batches)}):
                state["inputs"][("image", size)] = probe_images(variant.image_size, size)
            for size in sorted({1, *_ints(args.text_batches)}):
                state["inputs"][("text", size)] = encoder.tokenizer((TEXTS * (size // len(TEXTS) + 1))[:size])
        rows += measure(encoder, runtime, mode, state, args)
        del encoder
        gc.collect()  # each runtime's copy of the weights goes before the next loads its own
    base = {(r["tower"], r["batch"]): r["items_per_s"] for r in rows if "error" not in r and r["runtime"] == "torch"
            and r["requested"] == "fp32"}  # fmt: skip
    for row in rows:
        if (row["tower"], row.get("batch")) in base:
            row["x_torch_fp32"] = round(row["items_per_s"] / base[(row["tower"], row["batch"])], 2)
    sweep = []
    if args.workers and len(state["onnx_paths"]) == 2:
        sweep = workers_sweep(state["onnx_paths"], state["inputs"], args.workers, args.repeats, args.min_seconds)
    elif args.workers:
        notes.append("workers sweep skipped: no ONNX Runtime towers")
    return {
        "model": variant.version_id,
        "ceiling_gmac_per_s": round(ceiling, 1),
        "macs_per_item": {kind: round(value / 1e9, 3) for kind, value in state["macs"].items()},
        "mac_formula": MAC_FORMULA,
        "repeats": args.repeats,
        "rows": rows,
        "workers": sweep,
        "notes": notes,
    }


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def print_report(report: dict[str, Any]) -> None:
    macs = report["macs_per_item"]
    print(f"\n{report['model']}: {macs} GMAC/item; fp32 ceiling {report['ceiling_gmac_per_s']} GMAC/s\n")
    print(
        "| tower | batch | runtime | precision | items/s | GMAC/s | of fp32 peak | x torch fp32 | cos to torch fp32 | load s |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        if "error" in r:
            print(f"| {r['tower']} | | {r['runtime']} | {r['requested']} | error: {r['error'][:80]} | | | | | |")
            continue
        print(
            f"| {r['tower']} | {r['batch']} | {r['runtime']} | {r['precision']} | {r['items_per_s']:.2f} | {r['gmac_per_s']:.1f} "
            f"| {r['of_fp32_peak']:.0%} | {r.get('x_torch_fp32', float('nan')):.2f} | {r['cos_to_torch_fp32']:.6f} | {r['load_s']:.1f} |"
        )
    if report["workers"]:
        print("\n| ONNX Runtime fp32 | batch | layout | items/s | x 1 worker |")
        print("|---|---:|---|---:|---:|")
        for r in report["workers"]:
            print(f"| {r['tower']} | {r['batch']} | {r['layout']} | {r['items_per_s']:.2f} | {r['x_one_worker']:.2f} |")
    for note in report["notes"]:
        print(f"\nnote: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="PE-Core-B16-224")
    parser.add_argument("--image-batches", default="1,8")
    parser.add_argument("--text-batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per row, the best one counts")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="least length of one timed round")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="N of the N-workers x 1-thread sweep (0: skip it)"
    )
    parser.add_argument("--export-dir", type=Path, default=Path("bench/results/.exports"))
    parser.add_argument("--out", default="bench/results/runtime.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()  # with the end's: a run a neighbour disturbed shows in its own file
    report = run(args)
    import torch

    report |= {"machine": describe(), "torch_threads": torch.get_num_threads()}
    report["load_average"] = {"start": load_before, "end": os.getloadavg()}
    print_report(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
