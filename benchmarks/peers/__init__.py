"""Peer models on the same raw files (``python -m benchmarks.peers.run_peers``); README.md says how."""
