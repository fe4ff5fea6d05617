"""embperf's measurement engine: honest concurrency sweeps against text-embedding servers.

A target and a plan go in (`benchmarks.sweep.run_sweep`), an `embperf.run/1` result document
comes out. No Django here: the portal and the Celery workers drive this package, never the reverse.
"""

__version__ = "0.1.0"
