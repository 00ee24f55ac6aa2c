"""The one exception type for mistakes a user can fix (config, paths, data, launch).

The CLI prints its message as a single line and exits 2, without a traceback, so the
message must say what is wrong and how to fix it.
"""


class UserError(Exception):
    """A problem in the user's input or environment, with the fix in its message."""
