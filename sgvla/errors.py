"""User-facing errors.

Every problem a user can fix (a bad flag, a missing file, a missing driver) is raised as
`SgvlaError` with one sentence naming the input and the fix; the CLI prints it on one line and
exits non-zero instead of showing a traceback from deep inside a library.
"""


class SgvlaError(Exception):
    """A problem with the user's input or machine, with a message that says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, carrying what to run to continue (the CLI prints it and exits 130)."""


def load_json(path, fix: str):
    """Parse the JSON file `path`; a damaged one (cut short, edited by hand, binary) is one
    SgvlaError naming the file and `fix` (what to do), not a JSONDecodeError traceback."""
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SgvlaError(f"{path} is not valid JSON ({type(e).__name__}: {e}): {fix}") from None
