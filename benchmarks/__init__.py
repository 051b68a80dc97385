"""Benchmarks and quality harnesses; run from the repository root as ``python -m benchmarks.<script>``."""
