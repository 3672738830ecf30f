"""Benchmarks and studies of ep_jax (run from the repository root; see ``benchmarks/suite.py``)."""
