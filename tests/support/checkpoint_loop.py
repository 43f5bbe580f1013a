"""Run by test_crash as `python -m tests.support.checkpoint_loop ROOT`: adds vectors and checkpoints
in a loop until killed."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.store import add, clustered, open_store

if __name__ == "__main__":
    root = Path(sys.argv[1])
    store = open_store(root)
    if store.model_of("loop"):
        info = store.collection("loop")
    else:
        info = store.create_collection("loop", model="PE-Core-T16-384", dim=128)
    vectors = clustered(200_000, dim=128, seed=1)
    start = info.count
    while True:
        add(store, info.id, vectors[start : start + 500], start=start)
        start += 500
        store.checkpoint()
        print(start, flush=True)
