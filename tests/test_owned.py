"""Unit: a directory hps keeps under ``cache_dir`` is created by it, or used only if it is
a real directory of the server's own user that no one else can write (hps.owned)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hps.owned import Untrusted, open_own_dir, own_dir, own_writable_dir


def test_an_absent_directory_is_created_with_its_mode_and_parents(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)  # cache_dir itself may be anyone's to write (/tmp, emptyDir)
    path = tmp_path / "cache" / "plugins"
    assert own_dir(str(path), 0o700) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700 and path.stat().st_uid == os.geteuid()
    assert own_dir(str(path)) == str(path)  # present and ours: used as it is
    fd = open_own_dir(str(path))
    try:
        assert os.path.samestat(os.fstat(fd), path.stat())
    finally:
        os.close(fd)


def someone_elses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "theirs"
    path.mkdir(mode=0o755)
    monkeypatch.setattr(os, "geteuid", lambda: path.stat().st_uid + 1)
    return path


def a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    return tmp_path / "link"


def writable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, 0o775)
    return path


def a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "file"
    path.write_text("")
    return path


@pytest.mark.parametrize(("make", "why"), [
    (a_symlink, "is a symlink"),
    (someone_elses, "is owned by uid"),
    (writable_by_others, "is writable by group or others"),
    (a_file, "is not a directory"),
])
def test_a_directory_not_its_own_is_refused_with_one_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, why: str) -> None:
    path = make(tmp_path, monkeypatch)
    before = os.lstat(path)
    for use in (own_dir, open_own_dir):
        with pytest.raises(Untrusted) as refused:
            use(str(path))
        message = str(refused.value)
        assert message == f"{path} {message.split(' ', 1)[1]}" and why in message
        assert "\n" not in message and isinstance(refused.value, OSError)
    after = os.lstat(path)  # looked at, never changed
    assert (after.st_mode, after.st_uid, after.st_ino) == (before.st_mode, before.st_uid,
                                                           before.st_ino)


def test_what_cannot_be_created_is_an_oserror(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        own_dir(str(tmp_path / "file" / "plugins"))
    with pytest.raises(FileNotFoundError):
        open_own_dir(str(tmp_path / "absent"))


def test_a_cache_dir_another_user_owns_is_refused_before_anything_is_made_in_it(
        tmp_path: Path) -> None:
    """``/tmp/hps-cache`` made first by someone else: its owner could rename hps's
    directories away and put theirs in place, so nothing is made or used there."""
    theirs = tmp_path / "hps-cache"
    theirs.mkdir(mode=0o777)
    uid = 4242 if os.geteuid() != 4242 else 4243
    os.chown(theirs, uid, -1)  # the suite runs as root (the image test needs it)
    with pytest.raises(Untrusted) as refused:
        own_dir(str(theirs / "plugins"))
    assert f"{theirs} is owned by uid {uid}" in str(refused.value)
    assert list(theirs.iterdir()) == []
    ours = tmp_path / "ours"  # root's or the server's own: used (an emptyDir is root's, 0777)
    ours.mkdir(mode=0o777)
    assert own_dir(str(ours / "plugins")) == str(ours / "plugins")


def test_a_writable_own_dir_is_probed_and_left_clean(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "record"
    assert own_writable_dir(str(path)) == str(path)
    assert list(path.iterdir()) == []  # the probe file is gone
    os.symlink(tmp_path, tmp_path / "cache" / "link")
    with pytest.raises(Untrusted, match="is a symlink"):
        own_writable_dir(str(tmp_path / "cache" / "link"))
