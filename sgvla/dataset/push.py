"""`sgvla push-dataset`: upload an already-written, validated dataset folder to the Hub.

The folder is uploaded as it is (shards, card, meta/) with huggingface_hub's folder upload; it is
never re-encoded through `Dataset.push_to_hub`. Re-running the same command resumes: files the
repo already holds are skipped (huggingface_hub >= 1.x with hf_xet compares remote object ids;
older releases offer `upload_large_folder`, which is used when present). The token comes from the
usual `hf auth login` store or HF_TOKEN and is never printed.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub.utils import filter_repo_objects

from sgvla.dataset.atomic import write_text_atomic
from sgvla.dataset.card import PLACEHOLDER_REPO
from sgvla.dataset.layout import CARD_PATH, fmt_bytes, require_dataset
from sgvla.dataset.validate import validate_dataset
from sgvla.errors import SgvlaError
from sgvla.waits import reach_within

#: Never uploaded: hidden files anywhere (temporary shards `.x.tmp-PID`, caches, editor files) and
#: `sgvla gen`'s resume bookkeeping, which names the generating machine's absolute demo paths.
IGNORE_PATTERNS = [".*", "*/.*", "meta/plan.json", "meta/outcomes/*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def upload_plan(root: Path) -> list[tuple[str, int]]:
    """(path in repo, bytes) of every file the upload sends, in a stable order."""
    root = Path(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    kept = filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS)
    return [(f, (root / f).stat().st_size) for f in kept]



def fill_repo_id(root: Path, repo_id: str) -> None:
    """Put the repo id where the card's loading examples say USER/NAME (before uploading it)."""
    card = Path(root) / CARD_PATH
    text = card.read_text(encoding="utf-8")
    if PLACEHOLDER_REPO in text:
        write_text_atomic(card, text.replace(PLACEHOLDER_REPO, repo_id))


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the Hub cannot be reached' for the installed clients."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    errs: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for mod, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                       ("requests", ("ConnectionError", "Timeout"))):
        try:
            m = __import__(mod)
            errs += [getattr(m, n) if mod != "requests" else getattr(m.exceptions, n) for n in names]
        except (ImportError, AttributeError):
            continue
    return tuple(errs)


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise SgvlaError("no Hugging Face token found: run `hf auth login` or set HF_TOKEN, then re-run")
    return token


def _check_online() -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise SgvlaError("HF_HUB_OFFLINE is set: unset it (and connect to the network) to push the dataset")


def _upload(root: Path, repo_id: str, private: bool, revision: str | None, token: str) -> None:
    from huggingface_hub import HfApi, constants

    api = HfApi(token=token)
    with reach_within(f"the Hugging Face Hub at {constants.ENDPOINT}",
                      "check the network (or HF_ENDPOINT), then re-run the same command"):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    fill_repo_id(root, repo_id)  # only once the repo exists: a failed push leaves the folder as it was
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    if hasattr(api, "upload_large_folder"):  # huggingface_hub < 2: the resumable uploader
        api.upload_large_folder(repo_id=repo_id, folder_path=root, repo_type="dataset", revision=revision,
                                private=private, ignore_patterns=IGNORE_PATTERNS)
        return
    api.upload_folder(repo_id=repo_id, folder_path=root, repo_type="dataset", revision=revision,
                      ignore_patterns=IGNORE_PATTERNS,
                      commit_message=f"Upload sgvla dataset ({root.name})")


def push_dataset(path: Path, repo_id: str, private: bool = False, revision: str | None = None,
                 dry_run: bool = False) -> list[tuple[str, int]]:
    """Validate `path`, then upload it to the dataset repo `repo_id` (or only list it with dry_run)."""
    root = Path(path)
    if not _REPO_ID.match(repo_id or ""):
        raise SgvlaError(f"--repo-id {repo_id!r} is not USER/NAME (letters, digits, '-', '_', '.')")
    require_dataset(root)
    problems = validate_dataset(root)
    if problems:
        raise SgvlaError(f"{root} has {len(problems)} problem(s), first: {problems[0]} -- run "
                         f"`sgvla validate {root}` and fix them before pushing")
    plan = upload_plan(root)
    total = sum(n for _, n in plan)
    where = f"datasets/{repo_id}" + (f"@{revision}" if revision else "")
    if dry_run:
        for f, n in plan:
            print(f"{fmt_bytes(n):>10}  {f}")
        print(f"dry run: would upload {len(plan)} files ({fmt_bytes(total)}) to {where}"
              f"{' (private)' if private else ''}")
        return plan
    token = _token()
    _check_online()
    from huggingface_hub.errors import HfHubHTTPError

    try:
        _upload(root, repo_id, private, revision, token)
    except _network_errors() as e:
        raise SgvlaError(f"cannot reach the Hugging Face Hub ({type(e).__name__}): check the network "
                         "(or HF_ENDPOINT), then re-run the same command; it resumes where it stopped") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise SgvlaError(f"the Hub refused the token for {repo_id} (HTTP {status}): log in again with "
                             "`hf auth login` or set a write token in HF_TOKEN") from e
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SgvlaError(f"the Hub rejected the upload to {repo_id} (HTTP {status}): {first}; "
                         "re-run the same command to resume") from e
    print(f"uploaded {len(plan)} files ({fmt_bytes(total)}) to https://huggingface.co/{where}")
    return plan
