"""Checksums of checkpoints: recorded when written, verified before a resume trusts them.

A checkpoint with one flipped byte can load without complaint (orbax and torch check
structure, not content) and silently continue a run from a corrupted state. A ledger
(`checksums.json`, beside the checkpoints) maps each checkpoint (a file, or an orbax step
folder) to the SHA-256 of every file in it.
"""

import hashlib
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
    """SHA-256 of every file under `folder`, by path relative to it."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_ledger(directory) -> dict[str, dict[str, str]]:
    import json

    path = Path(directory) / LEDGER
    if not path.exists():
        return {}
    try:
        ledger = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is unreadable ({e}); delete it to resume without "
                         "checking the checkpoints, or use a new --out_dir") from None
    if not isinstance(ledger, dict):
        raise InputError(f"{path} is not a checksum ledger; delete it or use a new --out_dir")
    return ledger


def record(directory, entries: dict[str, dict[str, str]], keep) -> None:
    """Add `entries` (checkpoint name -> {relative file: sha256}) to the ledger in
    `directory` and drop the names not in `keep` (checkpoints that were deleted)."""
    ledger = {k: v for k, v in read_ledger(directory).items() if k in keep}
    ledger.update(entries)
    save_json(Path(directory) / LEDGER, ledger)


def verify(directory, name: str, base, checkpoint, label: str = "checkpoint") -> bool:
    """Check the files of checkpoint `name` (relative to `base`) against the ledger in
    `directory`; `label` and `checkpoint` (its file or folder) are named in the error. Returns False
    when the ledger has no entry for it (written by an older version); raises
    `InputError` naming the first file that is missing or differs."""
    digests = read_ledger(directory).get(name)
    if digests is None:
        return False
    for rel, digest in digests.items():
        path = Path(base) / rel
        if not path.is_file():
            raise InputError(f"{label}: file {path} is missing; delete {checkpoint} to "
                             "resume from the one before, or use a new --out_dir")
        if sha256_file(path) != digest:
            raise InputError(f"{label}: file {path} differs from its checksum (corrupted "
                             f"since it was written); delete {checkpoint} to resume from "
                             "the one before, or use a new --out_dir")
    return True
