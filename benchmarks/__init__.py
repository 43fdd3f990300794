"""Benchmark scripts and their helpers (not packaged); results/ holds their JSON."""
