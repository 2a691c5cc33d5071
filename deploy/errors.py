"""The command line's one error type for bad input."""


class UsageError(Exception):
    """Bad input the user can fix; the CLI prints it as one line and exits with status 2."""
