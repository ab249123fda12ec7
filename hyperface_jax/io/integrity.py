"""Checksums of checkpoints: recorded when written, verified before a resume trusts them.

A checkpoint with one flipped byte can load without complaint (orbax and torch check
structure, not content) and silently continue a run from a corrupted state. So no
checkpoint is trusted without its checksums: a checkpoint whose record is missing (a kill
between writing it and recording it, or a record someone removed) is never loaded.

Two layouts: an orbax step folder holds its own record (`checksums.json` inside the
folder: the run that wrote it and the SHA-256 of every other file in it), so the record
lives and dies with its step; single-file checkpoints share a ledger (`checksums.json`
beside them) mapping each file's name to its SHA-256.
"""

import hashlib
import json
from pathlib import Path

from hyperface_jax.io.files import InputError, save_json

LEDGER = "checksums.json"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_digests(folder) -> dict[str, str]:
    """SHA-256 of every file under `folder` (its own record excepted), by relative path."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() != LEDGER}


def _read_json(path: Path, advice: str, label: str = "checkpoints"):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise InputError(f"{label}: {path} is unreadable ({type(e).__name__}); "
                         f"{advice}") from None


def _is_digests(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in value.items())


def read_ledger(directory) -> dict[str, dict[str, str]]:
    """The ledger beside single-file checkpoints ({} when there is none yet); InputError
    when it is not a map of checkpoint name -> {file: sha256}."""
    path = Path(directory) / LEDGER
    if not path.exists():
        return {}
    advice = "delete the checkpoints to start over, or use a new --out_dir"
    ledger = _read_json(path, advice)
    if not isinstance(ledger, dict) or not all(_is_digests(v) for v in ledger.values()):
        raise InputError(f"{path} is not a checksum ledger; {advice}")
    return ledger


def remove_stale_temporaries(directory) -> None:
    """Remove the temporary files of ledger writes a kill interrupted (`atomic_write`
    names them `.checksums.json.<random>.tmp`); the caller holds the folder's lock, so no
    other writer owns them."""
    for tmp in Path(directory).glob(f".{LEDGER}.*.tmp"):
        tmp.unlink(missing_ok=True)


def record(directory, entries: dict[str, dict[str, str]], keep) -> None:
    """Add `entries` (checkpoint name -> {relative file: sha256}) to the ledger in
    `directory` and drop the names not in `keep` (checkpoints that were deleted)."""
    remove_stale_temporaries(directory)
    ledger = {k: v for k, v in read_ledger(directory).items() if k in keep}
    ledger.update(entries)
    save_json(Path(directory) / LEDGER, ledger)


def check_files(digests: dict[str, str], base, checkpoint, label: str) -> None:
    """Every file of `digests` (relative to `base`) exists and has its SHA-256; else
    `InputError` naming the first that is missing or differs."""
    for rel, digest in digests.items():
        path = Path(base) / rel
        if not path.is_file():
            raise InputError(f"{label}: file {path} is missing; delete {checkpoint} to "
                             "resume from the one before, or use a new --out_dir")
        if sha256_file(path) != digest:
            raise InputError(f"{label}: file {path} differs from its checksum (corrupted "
                             f"since it was written); delete {checkpoint} to resume from "
                             "the one before, or use a new --out_dir")


def verify(directory, name: str, base, checkpoint, label: str = "checkpoint") -> None:
    """Check the files of checkpoint `name` (relative to `base`) against the ledger in
    `directory`; `label` and `checkpoint` (its file or folder) are named in the error.
    A checkpoint the ledger does not know is refused like a corrupted one: without its
    checksum nothing says it is the file that was written."""
    digests = read_ledger(directory).get(name)
    if digests is None:
        raise InputError(f"{label}: {checkpoint} has no recorded checksum in "
                         f"{Path(directory) / LEDGER} (removed, or written by another "
                         f"program); delete {checkpoint} to resume from the one before, "
                         "or use a new --out_dir")
    check_files(digests, base, checkpoint, label)


# Step folders: the record inside ------------------------------------------------------------

def write_record(folder, run: dict) -> None:
    """Record a finished step folder: the run that wrote it and its files' SHA-256."""
    save_json(Path(folder) / LEDGER, {"run": run, "files": folder_digests(folder)})


def read_record(folder, label: str = "checkpoint") -> dict | None:
    """The record of a step folder, None when it has none (it will not be trusted)."""
    path = Path(folder) / LEDGER
    if not path.exists():
        return None
    advice = f"delete {folder} to resume from the step before, or use a new --out_dir"
    saved = _read_json(path, advice, label)
    if not (isinstance(saved, dict) and isinstance(saved.get("run"), dict)
            and _is_digests(saved.get("files")) and saved["files"]):
        raise InputError(f"{label}: {path} is not a checkpoint record; {advice}")
    return saved
