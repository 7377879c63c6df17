"""Uploading a folder to the Hugging Face Hub: the part `push-dataset` and `push-model` share.

The folder is sent as it is with huggingface_hub's folder upload. Re-running the same command
resumes: files the repo already holds are skipped (huggingface_hub >= 2 with hf_xet compares
remote object ids). The token comes
from the usual `hf auth login` store or HF_TOKEN and is never printed. Every failure a user can fix
(no token, offline, unreachable, refused) is one SgvlaError line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sgvla.errors import SgvlaError
from sgvla.waits import reach_within

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
#: Hidden files anywhere (temporary writes `.x.tmp-PID`, caches, editor files) are never uploaded.
HIDDEN = [".*", "*/.*"]


def is_repo_id(text: str | None) -> bool:
    return bool(_REPO_ID.match(text or ""))


def names_hub_repo(spec: str) -> bool:
    """`spec` is meant as a Hub repo id: it has that form, and is no local path (not even a mistyped
    one inside an existing folder, which must get the local 'no such folder' error, not a Hub lookup)."""
    return is_repo_id(spec) and not Path(spec).exists() and not Path(Path(spec).parts[0]).exists()


def check_repo_id(repo_id: str | None) -> str:
    if not is_repo_id(repo_id):
        raise SgvlaError(f"--repo-id {repo_id!r} is not USER/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def upload_plan(root: Path, ignore_patterns: list[str]) -> list[tuple[str, int]]:
    """(path in repo, bytes) of every file the upload sends, in a stable order."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    kept = filter_repo_objects(files, ignore_patterns=ignore_patterns)
    return [(f, (root / f).stat().st_size) for f in kept]


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


def _check_online(what: str) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise SgvlaError(f"HF_HUB_OFFLINE is set: unset it (and connect to the network) to push the {what}")


def _upload(root: Path, repo_id: str, repo_type: str, private: bool, revision: str | None, token: str,
            ignore_patterns: list[str], on_repo_ready: Callable[[], None] | None) -> None:
    from huggingface_hub import HfApi, constants

    api = HfApi(token=token)
    with reach_within(f"the Hugging Face Hub at {constants.ENDPOINT}",
                      "check the network (or HF_ENDPOINT), then re-run the same command"):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if on_repo_ready is not None:  # only once the repo exists: a failed push leaves the folder as it was
        on_repo_ready()
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=root, repo_type=repo_type, revision=revision,
                      ignore_patterns=ignore_patterns, commit_message=f"Upload sgvla {repo_type} ({root.name})")


def push_folder(root: Path, repo_id: str, repo_type: str, *, private: bool = False, revision: str | None = None,
                ignore_patterns: list[str] | None = None, on_repo_ready: Callable[[], None] | None = None) -> None:
    """Create the repo if needed (then call `on_repo_ready`), and upload `root` into it."""
    token = _token()
    _check_online(repo_type)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        _upload(Path(root), repo_id, repo_type, private, revision, token, ignore_patterns or HIDDEN, on_repo_ready)
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


def hub_url(repo_id: str, repo_type: str, revision: str | None = None) -> str:
    """Where the pushed repo is browsed (dataset repos live under datasets/)."""
    from huggingface_hub import constants

    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{constants.ENDPOINT}/{prefix}{repo_id}" + (f"/tree/{revision}" if revision else "")


def model_snapshot(repo_id: str) -> Path:
    """The local folder of a Hub model repo: the cached snapshot (offline too), downloaded if needed."""
    from huggingface_hub import constants, snapshot_download

    try:
        with reach_within(f"the Hugging Face Hub at {constants.ENDPOINT} for --model {repo_id!r}",
                          "check the repo id and the network, or pass a local model folder"):
            return Path(snapshot_download(repo_id, repo_type="model"))
    except SgvlaError:
        raise
    except Exception as e:  # not cached while offline, missing repo, no access: all the user's to fix
        raise SgvlaError(f"--model {repo_id!r} is no local folder and cannot be read from the Hugging Face Hub "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): check the path, "
                         "or the repo id, your login (HF_TOKEN), the network or the local Hub cache") from None
