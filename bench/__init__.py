"""Benchmarks: a script each (`python -m bench.<name>`), printing a table.

The services' process-wide settings of native libraries (lookalike/__init__.py: OpenBLAS in one
thread) are made here too, before any benchmark loads numpy: a benchmark that times the
product's code in its own process must run it as the services do (with OpenBLAS's spinning
threads, bench/copy_verify.py's searches took longer: BENCHMARKS.md "Stop 32").
"""

import lookalike  # noqa: F401  (its import sets the environment numpy's OpenBLAS reads)
