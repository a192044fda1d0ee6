"""Atomic writes: the old file or the new one, never half of one."""

from __future__ import annotations

import pytest

from stainadapt.atomic import atomic_save, atomic_write_bytes, atomic_write_text


def test_atomic_writes(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_save(target, broken)
    assert target.read_text() == "two"  # old content kept
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]  # no temp left

    seen = []
    atomic_save(tmp_path / "x.png", lambda tmp: (seen.append(tmp.suffix), tmp.write_bytes(b"")))
    assert seen == [".png"]  # writers that choose a format by suffix see the real one
