"""What OpenBLAS's spinning worker threads cost a service that multiplies small matrices now
and then (issue 15: the indexer's searches were slower in the stack than in one process).

    .venv/bin/python -m bench.blas_spin

Each setting runs in a fresh interpreter (OpenBLAS reads its environment when numpy loads it):
the matrix product of one verified search's copy-code distances (multi_hash.distance_matrix:
the query's codes by its VOTED + HASHED candidates' codes, counted on a sample photograph,
as float32 bits) every `--every-ms`, `--calls` times; printed: the CPU the process used (100 %
= one core) while mostly sleeping, and the product's own time.
OpenBLAS's default keeps a thread per core that spins 2^28 cycles after a call; threads that
sleep at once are the peer; one thread is what lookalike's services set (lookalike/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from consumers.features import copy_signature
from consumers.indexer.copy_verification import CODE_BYTES, HASHED, VOTED
from lookalike.samples import photo

SETTINGS = {
    "OpenBLAS's default (a thread per core; they spin 2^28 cycles)": {},
    "threads that sleep at once (OPENBLAS_THREAD_TIMEOUT=4)": {"OPENBLAS_THREAD_TIMEOUT": "4"},
    "lookalike's services: one thread (OPENBLAS_NUM_THREADS=1)": {"OPENBLAS_NUM_THREADS": "1"},
}

PROBE = """
import json, sys, time
import numpy as np
every, calls = float(sys.argv[1]) / 1000, int(sys.argv[2])
rng = np.random.default_rng(0)
rows, columns, bits = (int(a) for a in sys.argv[3:6])
query = rng.integers(0, 2, (rows, bits)).astype(np.float32)
candidates = rng.integers(0, 2, (columns, bits)).astype(np.float32)
took = []
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(calls):
    t = time.perf_counter()
    query @ candidates.T
    took.append(time.perf_counter() - t)
    time.sleep(every)
wall = time.perf_counter() - wall
cpu = (time.process_time() - cpu) / wall
print(json.dumps({"cpu": cpu, "product_ms": 1000 * float(np.median(took))}))
"""


def search_shape() -> tuple[int, int, int]:
    """(query codes, candidates' codes, bits) of one verified search's code distances."""
    img = photo("coffee")
    query = len(copy_signature.query_codes(img))
    per_image = len(copy_signature.describe(img)) // CODE_BYTES
    return query, (VOTED + HASHED) * per_image, copy_signature.CODE_BITS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every-ms", type=float, default=50.0)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    rows, columns, bits = search_shape()
    print(f"\nA verified search's code distances ({rows} x {bits} by {bits} x {columns:,}, "
          f"float32) every {args.every_ms:g} ms, {args.calls} times:\n")  # fmt: skip
    print("| OpenBLAS | CPU used (one core = 100 %) | product p50 ms |\n| --- | --- | --- |")
    for name, env in SETTINGS.items():
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                PROBE,
                *map(str, (args.every_ms, args.calls, rows, columns, bits)),
            ],
            env={**clean, **env},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | {100 * found['cpu']:.0f} % | {found['product_ms']:.3f} |")


if __name__ == "__main__":
    main()
