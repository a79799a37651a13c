"""The one exception type users see: a one-line message naming the file or key and the fix."""


class SanakitError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` on one line and exits with code 2."""
