"""paperbot's benchmarks: `python -m bench [--quick] [--json PATH]` (see bench/__main__.py)."""
