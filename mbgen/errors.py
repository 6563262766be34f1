"""Errors that are the user's to fix: the CLI prints them on one line and exits 2."""


class UserError(Exception):
    """A bad model file, an unknown op or model name, a model that does not fit, ...

    The message is shown to the user as is, so it names the cause and, where it helps, the fix.
    """


class RunFailure(Exception):
    """A build or run that failed (fault, hang, mismatch): the CLI exits 1."""
