"""`python -m bench <scenario> [options]`."""

from __future__ import annotations

import sys

SCENARIOS = {
    "load": "bench.load",
    "serving": "bench.serving",
    "ingest": "bench.ingest",
    "precision": "bench.precision",
    "query": "bench.query",
    "startup": "bench.startup",
    "ray": "bench.ray_ingest",
    "runtime": "bench.runtime",
    "cli": "bench.cli",
    "duplicates": "bench.duplicates",
    "exchange": "bench.exchange",
    "compose": "bench.compose",
    "metadata": "bench.metadata_filter",
    "objects": "bench.object_ingest",
    "backup": "bench.backup",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SCENARIOS:
        print(f"usage: python -m bench {{{','.join(SCENARIOS)}}} [options]", file=sys.stderr)
        return 2
    module = __import__(SCENARIOS[sys.argv[1]], fromlist=["main"])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
