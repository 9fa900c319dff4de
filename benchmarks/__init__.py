"""pytest-benchmark suites for numbanorm (see benchmarks/README.md)."""
