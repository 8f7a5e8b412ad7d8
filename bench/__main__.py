"""``python -m bench [--quick | --smoke]``: every benchmark, one table (bench/run_all.py)."""

from bench.run_all import main

raise SystemExit(main())
