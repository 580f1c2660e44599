"""API keys on real files: create, check, reload on change, and a bad file that keeps the old keys."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from fogline.cli import keys as keys_cli
from fogline.core.security.apikeys import (
    INVALID_KEY,
    KEY_PREFIX,
    MISSING_KEY,
    ApiKeys,
    create_key,
    digest,
    read_keys,
)
from fogline.errors import PermissionDeniedError, UnauthenticatedError


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.toml"


def bearer(key: str) -> str:
    return f"Bearer {key}"


def keep_only(path: Path, name: str) -> None:
    """Rewrite the keys file with the entry named ``name`` alone (the others revoked)."""
    entry = next(e for e in read_keys(path) if e.name == name)
    path.write_text(f'[[key]]\nname = "{entry.name}"\nsha256 = "{entry.sha256}"\n')


def touch_later(path: Path) -> None:
    """Move the file's mtime on, so a change within one clock tick is still seen."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_created_key_is_checked_and_named(path: Path) -> None:
    key = create_key(path, name="alice")
    assert key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX) + 40
    keys = ApiKeys(path)
    assert keys.check(bearer(key), "mlp") == "alice"
    assert keys.check(f"bearer   {key} ", "any-model") == "alice"  # the scheme is case-insensitive
    assert keys.check_any(bearer(key)) == "alice"


def test_the_file_holds_the_hash_never_the_key_and_only_its_owner_reads_it(path: Path) -> None:
    key = create_key(path, name="alice", models=["mlp"])
    text = path.read_text()
    assert key not in text and key[len(KEY_PREFIX):] not in text
    assert digest(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "fogline-ak-xyz"])
def test_no_key_is_unauthenticated_saying_how_to_send_one(path: Path, header: str | None) -> None:
    create_key(path, name="alice")
    with pytest.raises(UnauthenticatedError) as info:
        ApiKeys(path).check(header, "mlp")
    assert str(info.value) == MISSING_KEY


def test_a_wrong_key_is_unauthenticated_and_not_echoed(path: Path) -> None:
    key = create_key(path, name="alice")
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    for check in (lambda k: ApiKeys(path).check(bearer(k), "mlp"), lambda k: ApiKeys(path).check_any(bearer(k))):
        with pytest.raises(UnauthenticatedError) as info:
            check(wrong)
        assert str(info.value) == INVALID_KEY


def test_a_key_may_only_use_its_models(path: Path) -> None:
    key = create_key(path, name="bob", models=["mlp", "cnn"])
    keys = ApiKeys(path)
    assert keys.check(bearer(key), "cnn") == "bob"
    with pytest.raises(PermissionDeniedError) as info:
        keys.check(bearer(key), "resnet")
    assert str(info.value) == "API key 'bob' may not use model 'resnet'"
    with pytest.raises(PermissionDeniedError) as info:
        keys.check(bearer(key), "x" * 10_000)
    assert len(str(info.value)) < 200  # the model name is echoed bounded
    assert keys.check_any(bearer(key)) == "bob"


def test_a_duplicate_name_is_refused_and_the_file_is_unchanged(path: Path) -> None:
    create_key(path, name="alice")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        create_key(path, name="alice")
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["", "has space", "new\nline", "-dash-first", "x" * 65])
def test_a_bad_name_is_refused(path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not valid"):
        create_key(path, name=name)
    assert not path.exists()


def test_model_names_are_written_as_toml_strings(path: Path) -> None:
    odd = 'a "quoted" \\ name\twith\x7fcontrols'
    key = create_key(path, name="odd", models=[odd])
    assert read_keys(path)[0].models == frozenset({odd})
    assert ApiKeys(path).check(bearer(key), odd) == "odd"


def test_a_key_added_and_one_revoked_are_seen_after_recheck_s(path: Path) -> None:
    clock = Clock()
    alice = create_key(path, name="alice")
    keys = ApiKeys(path, clock=clock, recheck_s=1.0)
    bob = create_key(path, name="bob")
    touch_later(path)
    with pytest.raises(UnauthenticatedError):
        keys.check(bearer(bob), "mlp")  # not re-read yet: recheck_s has not passed
    clock.now += 1.0
    assert keys.check(bearer(bob), "mlp") == "bob"
    keep_only(path, "bob")
    touch_later(path)
    clock.now += 1.0
    with pytest.raises(UnauthenticatedError):
        keys.check(bearer(alice), "mlp")
    assert keys.check(bearer(bob), "mlp") == "bob"


def test_a_bad_file_on_reload_keeps_the_old_keys_and_logs_no_key(path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    key = create_key(path, name="alice")
    keys = ApiKeys(path, clock=clock, recheck_s=1.0)
    path.write_text(path.read_text() + "\n[[key]]\nname = 'mallory'\nsha256 = 'not hex'\n")
    touch_later(path)
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="fogline.core.security.apikeys"):
        assert keys.check(bearer(key), "mlp") == "alice"
    assert "sha256 must be the 64 hex digits" in caplog.text and "keeping the 1 keys" in caplog.text
    assert digest(key) not in caplog.text and key not in caplog.text and "not hex" not in caplog.text
    caplog.clear()
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="fogline.core.security.apikeys"):
        assert keys.check(bearer(key), "mlp") == "alice"
    assert caplog.text == ""  # said once per change, not on every check


def test_a_deleted_file_keeps_the_old_keys(path: Path) -> None:
    clock = Clock()
    key = create_key(path, name="alice")
    keys = ApiKeys(path, clock=clock)
    path.unlink()
    clock.now += 5
    assert keys.check(bearer(key), "mlp") == "alice"


@pytest.mark.parametrize(("text", "message"), [
    ("[[key]]\nname = 'a'\n", "sha256 must be"),
    ("[[key]]\nname = 'a'\nsha256 = '" + "0" * 64 + "'\nmodel = ['mlp']\n", "unknown fields ['model']"),
    ("[[key]]\nname = 'a'\nsha256 = '" + "0" * 64 + "'\nmodels = []\n", "leave it out to allow every model"),
    ("[[key]]\nname = 'a'\nsha256 = '" + "0" * 64 + "'\n[[key]]\nname = 'a'\nsha256 = '" + "1" * 64 + "'\n",
     "two keys are named 'a'"),
    ("key = 'x'\n", "must be an array of tables"),
    ("[[key]\n", "not valid TOML"),
    ("keys = []\n", "unknown top-level keys ['keys']"),
])
def test_a_bad_file_at_start_is_a_value_error_naming_the_file(path: Path, text: str, message: str) -> None:
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        ApiKeys(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_missing_file_at_start_is_a_value_error(path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        ApiKeys(path)


def test_the_cli_prints_only_the_key_and_lists_names_and_models(path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    keys_cli.add_parser(parser.add_subparsers(dest="command"))
    assert keys_cli.run(parser.parse_args(["keys", "create", str(path), "--name", "ci", "--model", "mlp"])) == 0
    key = capsys.readouterr().out.strip()
    assert ApiKeys(path).check(bearer(key), "mlp") == "ci"
    assert keys_cli.run(parser.parse_args(["keys", "create", str(path), "--name", "all"])) == 0
    capsys.readouterr()
    assert keys_cli.run(parser.parse_args(["keys", "list", str(path)])) == 0
    out = capsys.readouterr().out
    assert "ci" in out and "mlp" in out and "every model" in out
    assert digest(key)[:8] in out and digest(key)[:9] not in out and key not in out
    assert keys_cli.run(parser.parse_args(["keys", "create", str(path), "--name", "ci"])) == 2
    assert "already exists" in capsys.readouterr().err
