"""The error type of a user's mistake (flags, input files, data), as opposed to a bug.

Entry points print its message as one ``error: ...`` line and exit with code 2
(`bt_tf.cli.run_main`); a bug keeps its traceback. It is a `ValueError`, so
code that catches ValueError for bad arguments keeps working.
"""


class UserError(ValueError):
    """A bad flag value, a missing or malformed input file: the message says which and how."""
