"""Errors a user can cause, and the exit statuses the command line gives them.

``InputError`` (a ValueError) marks a bad config, flag or input file: ``main`` prints
its one-line message and exits 2, without a traceback. Anything else is a bug and keeps
its traceback. ``MissingFile`` is both an InputError and a FileNotFoundError.
"""

EXIT_INPUT = 2        # configuration or input error
EXIT_DIVERGED = 3     # too many NaN/Inf steps in a row
EXIT_OOM = 4          # out of device memory at run time (memory.out_of_memory)
EXIT_SIGTERM = 143    # a second SIGTERM (128 + 15)

# How a one-line error names the type a field expects (the command line's door and the run spec's).
TYPE_NAMES = {bool: "a bool (True or False)", int: "an int", float: "a float", str: "a string",
              tuple: "a tuple, e.g. \"('a','b')\"", list: "a list", dict: "a section of named fields"}


class InputError(ValueError):
    """A user error: the message names the file, field or flag and what is wrong."""


class MissingFile(InputError, FileNotFoundError):
    """A file or folder the run needs does not exist."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (KeyError's repr quotes and newlines removed)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split())
