"""``fogline certs``, through a parser built as the main CLI builds its own."""

from __future__ import annotations

import argparse
import datetime as dt
import stat
from pathlib import Path

import pytest

from fogline.adapters.tls.certs import identity_of, not_after, not_before, verify_chain
from fogline.cli import certs
from fogline.core.security.identity import Identity
from fogline.core.security.tokens import TOKEN_PREFIX, JoinTokens, TokenGrant


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fogline")
    certs.add_parser(top.add_subparsers(dest="command", required=True))
    return top


def fogline(*argv: str | Path) -> int:
    return certs.run(parser().parse_args(["certs", *map(str, argv)]))


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "ca"
    assert fogline("init", directory) == 0
    capsys.readouterr()
    return directory


def test_init_creates_the_ca_and_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "ca"
    assert fogline("init", directory) == 0
    out, err = capsys.readouterr()
    assert str(directory / "ca.pem") in out and str(directory / "ca.key") in out
    assert "fogline certs issue" in err
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600

    assert fogline("init", directory) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("fogline certs: a fleet CA exists already") and err.count("\n") == 1


def test_issue_writes_a_certificate_for_the_identity(ca_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "edge-a"
    assert fogline("issue", "--ca", ca_dir, "--service", "edge", "--region", "eu-1", "--id", "edge-a",
                   "--host", "127.0.0.1", "--host", "edge-a.example.com", "--ttl", "30d", "--out", out_dir) == 0
    out, _ = capsys.readouterr()
    cert_pem = (out_dir / "cert.pem").read_bytes()
    identity = Identity(service="edge", region="eu-1", id="edge-a")
    assert identity_of(cert_pem) == identity
    verify_chain(cert_pem, (ca_dir / "ca.pem").read_bytes())
    assert (out_dir / "ca.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()
    assert stat.S_IMODE((out_dir / "key.pem").stat().st_mode) == 0o600
    assert out.splitlines()[0] == identity.uri
    assert f"expires {not_after(cert_pem):%Y-%m-%dT%H:%M:%SZ}" in out
    assert not_after(cert_pem) - not_before(cert_pem) == dt.timedelta(days=30, seconds=60)  # 60 s: clock skew


def test_issue_says_what_to_fix(ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--service", "device", "--id", "dev-a"], "give --region"),
        (["--service", "worker", "--id", "w-1", "--region", "eu-1"], "names no region"),
        (["--service", "worker", "--id", "bad id"], "id 'bad id' is not valid"),
        (["--service", "worker", "--id", "w-1", "--host", "not a host"], "neither an IP address nor a DNS name"),
    ]
    for flags, message in cases:
        assert fogline("issue", "--ca", ca_dir, "--out", tmp_path / "out", *flags) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("fogline certs: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()

    assert fogline("issue", "--ca", tmp_path / "nowhere", "--service", "cloud", "--id", "c", "--out", tmp_path) == 2
    assert "no fleet CA in" in capsys.readouterr().err


def test_token_prints_only_a_token_that_redeems(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fogline("token", "--ca", ca_dir, "--service", "device", "--region", "eu-1", "--ttl", "1h",
                   "--uses", "2") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1 and out == lines[0] + "\n"
    token = lines[0]
    assert token.startswith(TOKEN_PREFIX)
    assert token not in err and "enrols a device in region 'eu-1', 2 use(s)" in err
    grant = JoinTokens(ca_dir / "tokens").redeem(token, service="device", region="eu-1")
    assert grant == TokenGrant("device", "eu-1")

    assert fogline("tokens", "--ca", ca_dir) == 0
    out, _ = capsys.readouterr()
    assert "uses_left=1" in out and "device" in out and token not in out and token[len(TOKEN_PREFIX):] not in out


def test_token_errors_go_to_stderr(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fogline("token", "--ca", ca_dir, "--service", "edge", "--ttl", "1h") == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "fogline certs: a join token for a edge needs its region\n"


def test_tokens_with_none_says_so(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fogline("tokens", "--ca", ca_dir) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no active join tokens" in err


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("30d", 2_592_000),
                                               ("42", 42), ("1.5h", 5400)])
def test_ttl_units(text: str, seconds: float) -> None:
    assert certs.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "1w", "h", "1 hour", "inf", "nan"])
def test_a_bad_ttl_is_an_argparse_error(text: str, ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(["certs", "token", "--ca", str(ca_dir), "--service", "worker", "--ttl", text])
    assert caught.value.code == 2
    assert "argument --ttl" in capsys.readouterr().err
