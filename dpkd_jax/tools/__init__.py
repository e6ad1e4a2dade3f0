"""Command-line tools that are not the main run (memory plan, GGUF conversion, pruning)."""

import sys


def run_tool(fn, *args) -> int:
    """Print what ``fn(*args)`` returns; a user error (a bad file or flag) becomes one
    ``error:`` line on stderr and exit status 2, with no traceback."""
    try:
        print(fn(*args))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
