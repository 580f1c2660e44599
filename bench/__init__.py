"""One-command performance benchmarks of Fogline (``python -m bench``; see DESIGN.md §7)."""
