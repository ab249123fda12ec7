"""Fault cases of a pack run (issue 23's tester): each is one line on stderr, exit 1 or 2,
no traceback, and nothing half-written."""

import json

import pytest

from hyperface_jax import InputError, pack, pack_references
from hyperface_jax.io import integrity

SMALL = ["--num_identities=40", "--dim=8", "--alpha=0", "--steps=20", "--log_every=10",
         "--checkpoint_every=10", "--progress=false"]

USER_OPTIMIZERS = '''
import sys
import optax


def raising_init(schedule, **kw):
    def init(params):
        raise RuntimeError("boom in init")
    return optax.GradientTransformation(init, lambda u, s, p=None: (u, s))


def raising_update(schedule, **kw):
    def update(updates, state, params=None):
        raise RuntimeError("boom in update")
    return optax.GradientTransformation(lambda p: (), update)


def wrong_shape(schedule, **kw):
    return optax.GradientTransformation(lambda p: (), lambda u, s, p=None: (u[:3], s))


def exits(schedule, **kw):
    sys.exit(0)
'''


def _finished_run(out):
    assert pack.main(["pack", f"--out_dir={out}", *SMALL]) == 0
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _damage_history(line: bytes):
    def damage(out):
        path = out / "history.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(lines[0] + line + b"\n" + b"".join(lines[1:]))
    return damage


def _string_checksums(out):
    (out / "checkpoints" / "20" / integrity.LEDGER).write_text(
        json.dumps({"run": {}, "files": "0" * 64}))


# name: (flags, damage to a finished run before re-running it, or None for a fresh folder)
CASES = {
    "num_identities_99999999999": (["--num_identities=99999999999", "--dim=64"], None),
    "optimizer_init_raises": (["--optimizer=user_opt:raising_init"], None),
    "optimizer_update_raises": (["--optimizer=user_opt:raising_update"], None),
    "optimizer_update_wrong_shape": (["--optimizer=user_opt:wrong_shape"], None),
    "optimizer_factory_exits_0": (["--optimizer=user_opt:exits"], None),
    "history_line_5": (["--steps=30"], _damage_history(b"5")),
    "history_line_list": (["--steps=30"], _damage_history(b"[1,2]")),
    "history_line_not_utf8": (["--steps=30"], _damage_history(b'{"step": "\xff\xfe"}')),
    "checksums_entries_strings": (["--steps=30"], _string_checksums),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_fault_case_is_one_line_without_traceback_and_nothing_half_written(
        tmp_path, capsys, monkeypatch, case):
    (tmp_path / "user_opt.py").write_text(USER_OPTIMIZERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    flags, damage = CASES[case]
    out = tmp_path / "run"
    before = None
    if damage is not None:
        _finished_run(out)
        damage(out)
        before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = pack.main(["pack", f"--out_dir={out}", *SMALL, *flags])
    err = capsys.readouterr().err
    assert code in (1, 2), (case, code, err)
    lines = err.splitlines()  # progress lines may come first; the error is one line
    assert "Traceback" not in err and lines[-1].startswith("error: "), err
    assert sum("error" in line.lower() for line in lines) == 1, err
    if before is None:
        assert not out.exists()  # the folder made for the run is gone again
    else:
        after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert after == before  # the refused re-run changed nothing


def test_an_api_flagfile_that_is_not_utf8_is_input_error(tmp_path):
    bad = tmp_path / "latin1.flags"
    bad.write_bytes("--steps=5\n--out_dir=caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        pack_references(num_identities=10, dim=4, alpha=0.0, flagfile=str(bad))
    nested = tmp_path / "outer.flags"
    nested.write_text(f"--flagfile={bad}\n")
    with pytest.raises(InputError, match="not UTF-8"):
        pack_references(num_identities=10, dim=4, alpha=0.0, flagfile=str(nested))
