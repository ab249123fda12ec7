"""Download the external weights bridges/ needs and verify their sha256.

    python third_party/fetch_weights.py --dest=weights            # everything
    python third_party/fetch_weights.py --dest=weights --only=arc2face,sd15
    python third_party/fetch_weights.py --dest=weights --verify_only

Needs internet (Hugging Face Hub and GitHub releases); never run by the tests. Files whose
sha256 is published (Hugging Face LFS pointers, see third_party/README.md) are checked
against it and a mismatch is an error. Files without a published checksum (configs,
tokenizer, Arc2Face's encoder, the LDM and DDPM face generators) are checked against
`third_party/weights.lock.json` when it lists them, and recorded there on their first
fetch (trust on first use): commit that file so later machines verify against it. Exit
codes: 0 all verified, 1 a checksum or download failed (one line each; offline: one line
naming the first file that could not be fetched, and no folder or file left behind), 2
bad flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from absl import app, flags

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
flags.DEFINE_string("dest", "weights", "Folder receiving arc2face/, sd15/, ldm/, ddpm/, "
                    "buffalo_l/.")
flags.DEFINE_list("only", [], "Subset of groups: arc2face, sd15, ldm, ddpm, buffalo_l "
                  "(default: all).")
flags.DEFINE_bool("verify_only", False, "Download nothing; verify the files under --dest.")
flags.DEFINE_string("lock", str(HERE / "weights.lock.json"),
                    "Lock file with the sha256 of files that have no published checksum.")

# group -> list of (source, path inside the group folder, published sha256 or None).
# source: ("hf", repo_id, file in repo) or ("zip", url, member).
BUFFALO_L = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ARC2FACE = "FoivosPar/Arc2Face"
LDM = "CompVis/ldm-celebahq-256"  # bridges.gallery: the paper's Latent Diffusion Model
DDPM = "google/ddpm-celebahq-256"  # bridges.gallery: published flat (no subfolders)
FILES = {
    "arc2face": [
        (("hf", ARC2FACE, "arc2face/config.json"), "arc2face/config.json", None),
        (("hf", ARC2FACE, "arc2face/diffusion_pytorch_model.safetensors"),
         "arc2face/diffusion_pytorch_model.safetensors",
         "d2377c16b7135650ca375817a4812a999194fba1f081e39117bd54e50dacc784"),
        (("hf", ARC2FACE, "encoder/config.json"), "encoder/config.json", None),
        (("hf", ARC2FACE, "encoder/pytorch_model.bin"), "encoder/pytorch_model.bin", None),
        (("hf", ARC2FACE, "arcface.onnx"), "arcface.onnx",
         "ec639a0429b4819130d1405a2d3b38beaa4cc4a6c5bd9cf48b94fdf65461de83"),
    ],
    "sd15": [
        (("hf", SD15, "model_index.json"), "model_index.json", None),
        (("hf", SD15, "tokenizer/merges.txt"), "tokenizer/merges.txt", None),
        (("hf", SD15, "tokenizer/vocab.json"), "tokenizer/vocab.json", None),
        (("hf", SD15, "tokenizer/special_tokens_map.json"),
         "tokenizer/special_tokens_map.json", None),
        (("hf", SD15, "tokenizer/tokenizer_config.json"), "tokenizer/tokenizer_config.json",
         None),
        (("hf", SD15, "scheduler/scheduler_config.json"), "scheduler/scheduler_config.json",
         None),
        (("hf", SD15, "vae/config.json"), "vae/config.json", None),
        (("hf", SD15, "vae/diffusion_pytorch_model.safetensors"),
         "vae/diffusion_pytorch_model.safetensors",
         "a2b5134f4dbc140d9c11f11cba3233099e00af40f262f136c691fb7d38d2194c"),
    ],
    "ldm": [(("hf", LDM, rel), rel, None) for rel in (
        "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.bin", "vqvae/config.json",
        "vqvae/diffusion_pytorch_model.bin")],
    "ddpm": [(("hf", DDPM, rel), rel, None) for rel in (
        "model_index.json", "config.json", "diffusion_pytorch_model.bin",
        "scheduler_config.json")],
    "buffalo_l": [
        (("zip", BUFFALO_L, "det_10g.onnx"), "det_10g.onnx",
         "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
        (("zip", BUFFALO_L, "w600k_r50.onnx"), "w600k_r50.onnx",
         "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"),
    ],
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reachable(url: str, timeout: float = 10.0) -> None:
    """FetchError unless the host of `url` resolves and accepts a connection: offline,
    this fails at once instead of after the download libraries' retries."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            pass
    except OSError as e:
        raise FetchError(f"cannot reach {host} ({_one_line(e)}): fetching the weights needs "
                         "internet access; nothing was written") from None


def _download_hf(repo: str, filename: str, target: Path, created: list[Path]) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no retry warnings: a failure is reported in one line

    cached = hf_hub_download(repo_id=repo, filename=filename)
    _make_parents(target, created)
    _copy_atomic(Path(cached), target)


def _download_zip_member(url: str, member: str, target: Path, cache: dict,
                         created: list[Path]) -> None:
    if url not in cache:
        fd, tmp = tempfile.mkstemp(suffix=".zip")
        os.close(fd)
        cache[url] = tmp  # removed at the end, whatever happens
        print(f"downloading {url}", file=sys.stderr)
        urllib.request.urlretrieve(url, tmp)  # noqa: S310 - fixed https URL above
    with zipfile.ZipFile(cache[url]) as z:
        names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == member]
        if not names:
            raise RuntimeError(f"{member} not in {url}")
        _make_parents(target, created)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as out, z.open(names[0]) as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, target)


class FetchError(RuntimeError):
    """A file could not be fetched; the message is one line."""


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _make_parents(target: Path, created: list[Path]) -> None:
    """mkdir -p target.parent, remembering the folders this run created."""
    missing = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
    for d in reversed(missing):
        d.mkdir()
        created.append(d)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders this run created that stayed empty (deepest first)."""
    for d in sorted(created, key=lambda d: len(d.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:  # not empty: it holds fetched files
            pass


def _fetch(source, target: Path, zips: dict, created: list[Path]) -> None:
    try:
        if source[0] == "hf":
            _download_hf(source[1], source[2], target, created)
        else:
            _download_zip_member(source[1], source[2], target, zips, created)
    except (KeyboardInterrupt, FetchError):
        raise
    except Exception as e:  # noqa: BLE001 - offline, HTTP errors, bad zips: one line
        where = f"{source[1]}/{source[2]}" if source[0] == "hf" else source[1]
        raise FetchError(f"cannot fetch {target} from {where} ({_one_line(e)}); this "
                         "needs internet access to huggingface.co and github.com") from None


def _copy_atomic(src: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)


def main(argv) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    groups = FLAGS.only or list(FILES)
    unknown = [g for g in groups if g not in FILES]
    if unknown:
        print(f"error: --only: unknown groups {unknown}; choose from {list(FILES)}",
              file=sys.stderr)
        return 2
    dest = Path(FLAGS.dest)
    lock_path = Path(FLAGS.lock)
    lock = json.loads(lock_path.read_text()) if lock_path.exists() else {}
    zips: dict = {}
    created: list[Path] = []
    failures = []
    try:
        if not FLAGS.verify_only:
            hosts = {"https://huggingface.co" if source[0] == "hf" else source[1]
                     for group in groups for source, rel, _ in FILES[group]
                     if not (dest / group / rel).exists()}
            for url in sorted(hosts):
                _reachable(url)
        for group in groups:
            for source, rel, published in FILES[group]:
                target = dest / group / rel
                key = f"{group}/{rel}"
                if not FLAGS.verify_only and not target.exists():
                    _fetch(source, target, zips, created)
                if not target.exists():
                    failures.append(f"{key}: missing")
                    continue
                digest = sha256(target)
                expected = published or lock.get(key)
                if expected is None:
                    lock[key] = digest
                    print(f"recorded {key} {digest} (first fetch)", file=sys.stderr)
                elif digest != expected:
                    failures.append(f"{key}: sha256 {digest} != expected {expected}")
                else:
                    print(f"ok {key}", file=sys.stderr)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for tmp in zips.values():
            Path(tmp).unlink(missing_ok=True)
        _remove_empty(created)
    text = json.dumps(dict(sorted(lock.items())), indent=2) + "\n"
    if lock and (not lock_path.exists() or lock_path.read_text() != text):
        lock_path.write_text(text)
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
