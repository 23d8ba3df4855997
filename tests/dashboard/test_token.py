"""The dashboard token file: made once, private to the user, refused when it may be known."""

from __future__ import annotations

import os
import stat

import pytest

from rapidfire_core.dashboard.token import TokenFileError, load_or_create_token, read_token, token_path


def test_the_token_is_made_once_in_a_private_file_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPIDFIRE_HOME", str(tmp_path / "home"))
    assert read_token() is None
    token = load_or_create_token()
    path = token_path()
    assert path == tmp_path / "home" / "dashboard_token"
    assert len(token) >= 32 and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_token() == token == read_token()
    path.unlink()
    assert load_or_create_token() != token  # deleting the file makes a new one


def test_a_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "dashboard_token"
    path.write_text("known\n")
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="readable or writable by other users"):
        load_or_create_token(path)
    path.chmod(0o600)
    assert load_or_create_token(path) == "known"


def test_a_symbolic_link_or_an_empty_file_is_refused(tmp_path):
    planted = tmp_path / "planted"
    planted.write_text("attacker\n")
    planted.chmod(0o600)
    link = tmp_path / "dashboard_token"
    os.symlink(planted, link)
    with pytest.raises(TokenFileError, match="delete it"):
        read_token(link)
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    with pytest.raises(TokenFileError, match="is empty"):
        read_token(empty)


def test_a_file_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "dashboard_token"
    path.write_text("theirs\n")
    path.chmod(0o600)
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # as seen by another user
    with pytest.raises(TokenFileError, match="not to you"):
        read_token(path)
