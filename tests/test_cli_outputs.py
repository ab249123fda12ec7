"""What the CLIs read and write: file modes, full disks, unsafe-load hints, huge rows,
checkpoint checksums (hyperface_jax/io/files.py, integrity.py, checkpoint.py)."""

import errno
import json
import os
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import OutDir

from hyperface_jax import cli
from hyperface_jax.io import checkpoint, files, integrity
from hyperface_jax.io.files import InputError


@pytest.fixture
def umask():
    def set_to(mask):
        os.umask(mask)

    before = os.umask(0o022)
    yield set_to
    os.umask(before)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert files.current_umask() == mask
    files.save_embeddings(tmp_path / "e.npy", np.eye(3))
    files.save_json(tmp_path / "r.json", {"a": 1})
    for name in ("e.npy", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_full_disk_is_one_line_naming_the_path_and_the_free_space(tmp_path, capsys):
    def half_written(f):
        f.write(b"{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "report.json"
    code = cli.run_main(["prog", f"--out_dir={tmp_path}"], OutDir,
                        lambda fv: files.atomic_write(target, half_written))
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and str(target) in err and "MB free" in err, err
    assert "no space left" in err
    assert sorted(os.listdir(tmp_path)) == []  # no temporary left behind, lock released


def test_a_text_file_named_npy_gets_no_unsafe_loading_hint(tmp_path):
    text = tmp_path / "notes.npy"
    text.write_text("1 2 3\n")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    for path, reason in ((text, "no NumPy header"), (objects, "never unpickled"),
                         (empty, "empty")):
        with pytest.raises(InputError) as e:
            files.load_embeddings(path)
        message = str(e.value)
        assert "not a readable .npy" in message and reason in message, message
        assert "allow_pickle" not in message and "pickle.load" not in message, message


@pytest.mark.parametrize("magnitude", [1.0, 1e19, 2e19, 1e30, 3e38])
def test_rows_of_any_finite_size_normalise_to_their_direction(tmp_path, magnitude):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 16))
    direction = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    data = (direction * (magnitude / np.abs(direction).max())).astype(np.float32)
    assert np.isfinite(data).all()
    np.save(tmp_path / "g.npy", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = files.load_embeddings(tmp_path / "g.npy")
    np.testing.assert_allclose(loaded, direction, atol=1e-6)


def test_zero_rows_are_still_refused(tmp_path):
    data = np.ones((3, 4), np.float32)
    data[1] = 0
    np.save(tmp_path / "g.npy", data)
    with pytest.raises(InputError, match="zero vector in row 1"):
        files.load_embeddings(tmp_path / "g.npy")


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _orbax_data_file(step_folder):
    return max((p for p in step_folder.rglob("*") if p.is_file() and "/d/" in p.as_posix()),
               key=lambda p: p.stat().st_size)


def test_a_flipped_byte_in_an_orbax_checkpoint_is_named_on_resume(tmp_path):
    import orbax.checkpoint as ocp

    state = {"x": jnp.arange(4096, dtype=jnp.float32)}
    run = {"seed": 0}
    manager = checkpoint.open_manager(tmp_path, run)
    manager.save(1, args=ocp.args.StandardSave(state))
    manager.save(2, args=ocp.args.StandardSave({"x": state["x"] + 1}))
    manager.wait_until_finished()
    manager.close()
    assert all(integrity.read_record(tmp_path / s)["run"] == run for s in ("1", "2"))
    manager = checkpoint.open_manager(tmp_path, run)
    np.testing.assert_array_equal(checkpoint.restore_latest(manager, state)["x"],
                                  state["x"] + 1)
    largest = _orbax_data_file(tmp_path / "2")
    _flip_a_byte(largest)
    with pytest.raises(InputError) as e:
        checkpoint.restore_latest(manager, state)
    assert str(largest) in str(e.value) and "checksum" in str(e.value)
    manager.close()


PACK = ["--num_identities=60", "--dim=8", "--alpha=0", "--steps=30", "--log_every=10",
        "--checkpoint_every=10", "--max_to_keep=2", "--progress=false"]


def _pack(out, *extra) -> int:
    from hyperface_jax import pack

    return pack.main(["pack", f"--out_dir={out}", *PACK, *extra])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert _pack(out) == 0
    return np.load(out / "embeddings.npy")


@pytest.mark.parametrize("damage", ["record_removed", "killed_before_the_record"])
def test_a_step_without_its_record_is_never_resumed_from(tmp_path, capsys, straight, damage):
    # The reproduction: rm the checksums, flip a byte in an orbax data file, rerun.
    out = tmp_path / "run"
    assert _pack(out, "--steps=20") == 0
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["10", "20"]
    (ckpts / "20" / integrity.LEDGER).unlink()  # removed, or never written (a kill)
    _flip_a_byte(_orbax_data_file(ckpts / "20"))
    if damage == "killed_before_the_record":  # the write of the record was under way too
        (ckpts / "20" / f".{integrity.LEDGER}.x1y2.tmp").write_text("{")
    (ckpts / f".{integrity.LEDGER}.a8b9.tmp").write_text("{")  # an older version's ledger
    capsys.readouterr()
    assert _pack(out) == 0
    err = capsys.readouterr().err
    assert "discarded the checkpoint(s) at step 20" in err and "resuming from step 10" in err
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == 10
    assert np.load(out / "embeddings.npy").tobytes() == straight.tobytes()
    assert [h["step"] for h in report["history"]] == [0, 10, 20, 30]
    assert not list(ckpts.rglob(".*.tmp"))
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["20", "30"]


def test_no_verified_step_starts_over_and_removing_run_json_keeps_the_same_run_check(
        tmp_path, capsys, straight):
    out = tmp_path / "run"
    assert _pack(out, "--steps=20") == 0
    ckpts = out / "checkpoints"
    (ckpts / checkpoint.RUN_FILE).unlink()
    capsys.readouterr()
    assert _pack(out, "--seed=1") == 2  # each step's record names the run that wrote it
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different run" in err and "seed: 0 -> 1" in err, err
    for step in ("10", "20"):
        (ckpts / step / integrity.LEDGER).unlink()
    assert _pack(out) == 0  # nothing verified: a clean restart, not a silent resume
    assert "starting over" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] is None
    assert np.load(out / "embeddings.npy").tobytes() == straight.tobytes()


@pytest.mark.parametrize("content", ['{"1": "abc"}', '["x"]', '{"run": {}, "files": '
                                     '{"a": 5}}', "\xff\xfe"])
def test_checksum_files_of_the_wrong_shape_are_one_line(tmp_path, content):
    (tmp_path / integrity.LEDGER).write_bytes(content.encode("latin-1"))
    with pytest.raises(InputError) as e:
        integrity.read_ledger(tmp_path)
    assert str(tmp_path / integrity.LEDGER) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError):
        integrity.read_record(tmp_path)


def test_a_flipped_byte_in_a_training_checkpoint_is_named_on_resume(tmp_path):
    torch = pytest.importorskip("torch")
    from bridges.recognition import train

    folder = tmp_path / "checkpoints"
    path = folder / "epoch_001.pt"
    blob = {k: 0 for k in ("trainee", "optimizer", "scaler", "epoch", "step",
                           "step_rows", "epoch_rows")}
    blob["identity"], blob["trainee"] = {}, {"w": torch.arange(1000.0)}
    train._save_torch(path, blob, ledger_keep=[path.name])
    assert train._load_checkpoint(path)["trainee"]["w"].sum() == sum(range(1000))
    _flip_a_byte(path)
    with pytest.raises(InputError) as e:
        train._load_checkpoint(path)
    assert str(path) in str(e.value) and "checksum" in str(e.value)
    (folder / integrity.LEDGER).unlink()  # removing the ledger does not switch it off
    with pytest.raises(InputError, match="no recorded checksum"):
        train._load_checkpoint(path)


def _history(max_cos, gallery=False):
    rows = []
    for step, c in enumerate(max_cos):
        row = {"step": step * 10, "loss": c, "loss_packing": c, "max_cos": c,
               "mean_nn_cos": c - 0.1, "nn_cos_p01": c - 0.2, "nn_cos_p99": c}
        if gallery:
            row.update(loss_regulariser=0.3, mean_gallery_cos=0.5)
        rows.append(row)
    return rows


@pytest.mark.parametrize("max_cos,bound,gallery,panels,gap", [
    ([0.9, 0.6, 0.5 + 1e-4, 0.5 + 1e-7], 0.5, False, 3, True),  # a small code nears its bound
    ([0.9, 0.6, 0.5 + 1e-4, 0.5 - 1e-9], 0.5, True, 4, True),  # rounding below: drawn at floor
    ([0.2, 0.1, 0.07, 0.063], 0.0037, True, 3, False),  # far from the bound: no gap panel
    ([0.2, 0.1], None, False, 2, False),
])
def test_every_curves_panel_has_a_y_label_and_small_codes_a_log_gap(
        tmp_path, monkeypatch, max_cos, bound, gallery, panels, gap):
    from hyperface_jax.io import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda path, fig: figures.append(fig))
    plots.packing_curves(_history(max_cos, gallery), tmp_path / "c.png", bound=bound)
    axes = figures[0].axes
    assert len(axes) == panels
    assert all(ax.get_ylabel() for ax in axes)
    assert (axes[-1].get_yscale() == "log") == gap
    if gap:
        drawn = axes[-1].lines[0].get_ydata()
        np.testing.assert_allclose(drawn, np.maximum(np.array(max_cos) - bound,
                                                     plots.GAP_FLOOR), rtol=1e-6)


def test_a_full_disk_inside_a_library_is_one_line_too(tmp_path, capsys):
    from hyperface_jax.io import checkpoint

    def job(fv):  # what tensorstore raises under orbax when the disk fills
        with checkpoint.os_errors():
            raise ValueError("Error writing local file \"/x/d/abc\": [OS error: No space "
                             "left on device]\n[tensorstore_spec=...]")

    assert cli.run_main(["prog", f"--out_dir={tmp_path}"], OutDir, job) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on device" in err and "MB free" in err


def test_unit_row_check_is_chunked_and_names_the_worst_row():
    x = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert files.unit_row_error(x, chunk_rows=64)[:2] == (True, pytest.approx(0.0, abs=1e-6))
    x[777] *= 1.01  # in the 13th chunk of 64
    finite, off, row = files.unit_row_error(x, chunk_rows=64)
    assert finite and row == 777 and off == pytest.approx(0.01, rel=1e-3)
    x[5, 3] = np.nan
    finite, off, row = files.unit_row_error(x, chunk_rows=64)
    assert not finite and off == np.inf and row == 5


def test_json_reports_are_strict_json_with_undefined_values_as_null(tmp_path):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    files.save_json(tmp_path / "r.json", {
        "tar": float("nan"), "threshold": -np.inf, "rows": [np.float32("nan"), 0.5],
        "curve": np.array([1.0, np.inf]), "n": np.int64(3), "ok": np.float64(0.25)})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {
        "tar": None, "threshold": None, "rows": [None, 0.5], "curve": [1.0, None],
        "n": 3, "ok": 0.25}


def _npy_with_header(path, declared: int, body: bytes = b"") -> None:
    path.write_bytes(b"\x93NUMPY\x02\x00" + declared.to_bytes(4, "little") + body)


HOSTILE = {  # file -> what the message must say (issue 23's point 10)
    "header_200kb": ("its header declares", lambda p: _npy_with_header(
        p, 200_060, b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }"
        + b" " * 200_000 + b"\n" + b"\0" * 16)),
    "header_4gb_in_20_bytes": ("its header declares",
                               lambda p: _npy_with_header(p, 4 * 2**30 - 1, b"\0" * 8)),
    "float64_1e300": ("too large for float32", lambda p: np.save(p, np.array([[1e300, 1.0],
                                                                             [1.0, 0.0]]))),
    "folder": ("is a folder", lambda p: p.mkdir()),
    "fifo": ("not a regular file", lambda p: os.mkfifo(p)),
    "dev_zero": ("not a regular file", lambda p: p.symlink_to("/dev/zero")),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_npy_files_are_refused_with_their_real_cause(tmp_path, case):
    expected, make = HOSTILE[case]
    path = tmp_path / "g.npy"
    make(path)
    with pytest.raises(InputError) as e:
        files.load_embeddings(path, "gallery")
    message = str(e.value)
    assert expected in message and str(path) in message and "\n" not in message, message
    assert "not found" not in message and "Python objects" not in message
    assert "NaN or Inf" not in message


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only file system needs root")
def test_a_read_only_mount_is_named_read_only(tmp_path):
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mount is not allowed here")
    try:
        with pytest.raises(InputError, match="read-only file system"):
            from hyperface_jax.io import runs

            runs.prepare_folder(mount / "run")  # a new folder on it
        with pytest.raises(InputError, match="read-only file system"):
            runs.prepare_folder(mount)  # the existing folder itself
    finally:
        subprocess.run(["umount", str(mount)], check=True)
