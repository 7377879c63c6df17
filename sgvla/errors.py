"""User-facing errors.

Every problem a user can fix (a bad flag, a missing file, a missing driver) is raised as
`SgvlaError` with one sentence naming the input and the fix; the CLI prints it on one line and
exits non-zero instead of showing a traceback from deep inside a library.
"""


class SgvlaError(Exception):
    """A problem with the user's input or machine, with a message that says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, carrying what to run to continue (the CLI prints it and exits 130)."""
