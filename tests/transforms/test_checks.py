"""Checks on the launcher: the output's write probe (issue 28)."""
import os
import time

import pytest
from beam_projector.transforms import checks

from support import child_python


def test_a_refused_output_leaves_no_write_probe(tmp_path):
    """A full disk lets create() make the probe and fails its write; the
    probe used to stay, one 0-byte .write-probe-* per refused run, forever.
    RLIMIT_FSIZE=1 fails the write the same way without root (EFBIG; the
    real full disk is in write/test_disk_full.py)."""
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = child_python(f"""
        from beam_projector.transforms import checks
        try:
            checks.check_output({str(out)!r})
        except ValueError as e:
            print('refused:', e)
    """, file_size=1)
    assert code == 0 and "refused:" in stdout and "is not writable" in stdout, stdout + err[-800:]
    assert os.listdir(out) == []


def test_stale_write_probes_are_swept_and_fresh_ones_kept(tmp_path):
    """Probes an earlier run left behind go when the folder is next probed;
    a fresh one (a concurrent run's) and other names are never touched."""
    stale = tmp_path / (checks.PROBE_PREFIX + "a" * 32)
    fresh = tmp_path / (checks.PROBE_PREFIX + "b" * 32)
    other = tmp_path / (checks.PROBE_PREFIX + "mine")
    for path in (stale, fresh, other):
        path.write_bytes(b"")
    old = time.time() - checks.STALE_PROBE_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    checks.check_output(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([fresh.name, other.name])


@pytest.mark.parametrize("name", ["x", ".write-probe-" + "c" * 31])
def test_the_sweep_knows_only_its_own_names(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    os.utime(path, (0, 0))
    checks.sweep_stale_probes(str(tmp_path))
    assert path.exists()
