"""CLI and process wiring: the embedded stack, the demo, and the entry points of each service.

Every service starts here (`lookalike <service>`, `python -m lookalike <service>`), so this is
where process-wide settings of the native libraries are made, before any of them loads.
"""

import os

# OpenBLAS's worker threads spin (2^28 cycles by default) after each multiplication before they
# sleep. A service multiplies small matrices every few milliseconds (the copy codes' distances
# of every search), so one of them spun on a whole core, which the event loop, the broker and
# the searches themselves then lacked (bench/blas_spin.py, BENCHMARKS.md "OpenBLAS in one
# thread"). One thread cannot spin and multiplies such small matrices faster than two that
# must be woken; large work (a float index's training) gets no second core from OpenBLAS. numpy
# loads OpenBLAS later; an operator's own OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
