"""Command-line tools that are not the main run (memory planning)."""
