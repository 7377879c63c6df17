"""`sgvla push-dataset`: upload an already-written, validated dataset folder to the Hub.

The folder is uploaded as it is (shards, card, meta/), never re-encoded through
`Dataset.push_to_hub`; re-running the same command resumes (`sgvla.hub`).
"""

from __future__ import annotations

from pathlib import Path

from sgvla.dataset.atomic import write_text_atomic
from sgvla.dataset.card import PLACEHOLDER_REPO
from sgvla.dataset.layout import CARD_PATH, fmt_bytes, require_dataset
from sgvla.dataset.validate import validate_dataset
from sgvla.errors import SgvlaError
from sgvla.hub import HIDDEN, check_repo_id, hub_url, push_folder
from sgvla.hub import upload_plan as _plan

#: Never uploaded besides hidden files: `sgvla gen`'s resume bookkeeping, which names the
#: generating machine's absolute demo paths.
IGNORE_PATTERNS = [*HIDDEN, "meta/plan.json", "meta/outcomes/*"]


def upload_plan(root: Path) -> list[tuple[str, int]]:
    """(path in repo, bytes) of every file the upload sends, in a stable order."""
    return _plan(root, IGNORE_PATTERNS)


def fill_repo_id(root: Path, repo_id: str) -> None:
    """Put the repo id where the card's loading examples say USER/NAME (before uploading it)."""
    card = Path(root) / CARD_PATH
    text = card.read_text(encoding="utf-8")
    if PLACEHOLDER_REPO in text:
        write_text_atomic(card, text.replace(PLACEHOLDER_REPO, repo_id))


def push_dataset(path: Path, repo_id: str, private: bool = False, revision: str | None = None,
                 dry_run: bool = False) -> list[tuple[str, int]]:
    """Validate `path`, then upload it to the dataset repo `repo_id` (or only list it with dry_run)."""
    root = Path(path)
    check_repo_id(repo_id)
    require_dataset(root)
    problems = validate_dataset(root)
    if problems:
        raise SgvlaError(f"{root} has {len(problems)} problem(s), first: {problems[0]} -- run "
                         f"`sgvla validate {root}` and fix them before pushing")
    plan = upload_plan(root)
    total = sum(n for _, n in plan)
    url = hub_url(repo_id, "dataset", revision)
    if dry_run:
        for f, n in plan:
            print(f"{fmt_bytes(n):>10}  {f}")
        print(f"dry run: would upload {len(plan)} files ({fmt_bytes(total)}) to {url}"
              f"{' (private)' if private else ''}")
        return plan
    push_folder(root, repo_id, "dataset", private=private, revision=revision, ignore_patterns=IGNORE_PATTERNS,
                on_repo_ready=lambda: fill_repo_id(root, repo_id))
    print(f"uploaded {len(plan)} files ({fmt_bytes(total)}) to {url}")
    return plan
