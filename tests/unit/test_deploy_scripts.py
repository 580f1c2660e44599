"""The deploy/ scripts' argument checks (no process is started: --check), their security settings,
and the systemd units."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TIERS = ("cloud", "worker", "edge", "device")
MASTERS = {"cloud": ("8013", "8014"), "edge": ("8003", "8004")}
BASE = {"PATH": os.environ["PATH"], "FOGLINE_ENV_FILE": "/nonexistent/fogline.env"}
TOKEN = "fogline-jt-0123456789ab-SECRETsecretSECRETsecret"
TLS_REFUSED = ("FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA are not set, and FOGLINE_HOST={host} is not "
               "loopback")


def check(tier: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DEPLOY / f"fogline-{tier}.sh"), "--check", *args], env={**BASE, **env},
                          capture_output=True, text=True, timeout=30, check=False)


def start(tier: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the script for real (it execs FOGLINE_BIN, here a stand-in that shows what it was given)."""
    return subprocess.run(["bash", str(DEPLOY / f"fogline-{tier}.sh"), *args], env={**BASE, **env},
                          capture_output=True, text=True, timeout=30, check=False)


def private(path: Path, text: str = "x\n") -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def tls_files(directory: Path) -> dict[str, str]:
    """FOGLINE_TLS_* naming a certificate, a key (0600) and a CA in ``directory`` (the checks only look
    at the files; the processes of tests/integration/test_deploy.py read real ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_text("cert\n")
    (directory / "ca.pem").write_text("ca\n")
    private(directory / "key.pem")
    return {"FOGLINE_TLS_CERT": str(directory / "cert.pem"), "FOGLINE_TLS_KEY": str(directory / "key.pem"),
            "FOGLINE_TLS_CA": str(directory / "ca.pem")}


def required(tier: str, tmp_path: Path) -> dict[str, str]:
    """The settings ``tier`` cannot start without, TLS aside."""
    (tmp_path / "models").mkdir(exist_ok=True)
    values = {"FOGLINE_ADVERTISE_HOST": "10.0.0.5"}
    if tier in ("edge", "device"):
        values["FOGLINE_REGION"] = "eu-west"
    if tier in ("worker", "device"):
        values["FOGLINE_MODELS"] = str(tmp_path / "models")
    values.update({"worker": {"FOGLINE_CLOUD_CONTROL": "10.0.0.10:8012"},
                   "device": {"FOGLINE_EDGE_CONTROL": "10.1.0.2:8002"}}.get(tier, {}))
    return values


def secure(tier: str, tmp_path: Path) -> dict[str, str]:
    return {**required(tier, tmp_path), **tls_files(tmp_path / "tls")}


def flag(words: list[str], name: str) -> str | None:
    """The value after ``name`` in a command line (None if it is not there)."""
    return words[words.index(name) + 1] if name in words else None


def problems(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    return [line[4:] for line in done.stderr.splitlines() if line.startswith("  - ")]


@pytest.mark.parametrize(("tier", "missing"), [
    ("cloud", ["FOGLINE_ADVERTISE_HOST"]),
    ("worker", ["FOGLINE_ADVERTISE_HOST", "FOGLINE_MODELS", "FOGLINE_CLOUD_CONTROL"]),
    ("edge", ["FOGLINE_ADVERTISE_HOST", "FOGLINE_REGION"]),
    ("device", ["FOGLINE_ADVERTISE_HOST", "FOGLINE_REGION", "FOGLINE_MODELS", "FOGLINE_EDGE_CONTROL"]),
])
def test_a_script_without_its_settings_names_every_missing_one_and_exits_2(tier: str, missing: list[str]) -> None:
    done = check(tier, {})
    assert done.returncode == 2 and done.stdout == ""
    assert f"fogline-{tier}.sh: cannot start; fix these settings" in done.stderr
    # ... TLS included: the default FOGLINE_HOST=0.0.0.0 is not loopback.
    assert [line.split()[1] for line in done.stderr.splitlines()[1:]] == [*missing, "FOGLINE_TLS_CERT,"]


def test_malformed_settings_say_what_is_wrong(tmp_path: Path) -> None:
    done = check("edge", {"FOGLINE_ADVERTISE_HOST": "10.0.0.1", "FOGLINE_REGION": "a", "FOGLINE_GRPC_PORT": "80a",
                          "FOGLINE_DISCOVERY": "zookeeper"})
    assert done.returncode == 2
    assert "FOGLINE_GRPC_PORT must be a port number (0-65535), got '80a'" in done.stderr
    assert "FOGLINE_DISCOVERY must be 'embedded' or 'consul', got 'zookeeper'" in done.stderr
    done = check("device", {"FOGLINE_ADVERTISE_HOST": "h", "FOGLINE_REGION": "a", "FOGLINE_EDGE_CONTROL": "e:1",
                            "FOGLINE_MODELS": str(tmp_path / "nope")})
    assert f"FOGLINE_MODELS={tmp_path / 'nope'} is not a directory" in done.stderr
    assert check("edge", {}, str(tmp_path / "missing.env")).stderr.strip().endswith("not found")
    done = check("edge", {**secure("edge", tmp_path), "FOGLINE_ADMIN_PORT": "8001", "FOGLINE_CLIENT_AUTH": "maybe"})
    assert problems(done) == [
        "FOGLINE_CLIENT_AUTH must be none, optional or require (the default), got 'maybe'",
        "FOGLINE_ADMIN_PORT and FOGLINE_GRPC_PORT are both port 8001: give each its own"]


def test_an_env_file_gives_the_command_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    env_file = tmp_path / "device.env"
    env_file.write_text("# a comment\nFOGLINE_ADVERTISE_HOST=10.1.3.21   # a comment after a value\n"
                        "FOGLINE_REGION='eu-west'\n"
                        f"FOGLINE_MODELS={tmp_path / 'models'}\nFOGLINE_MODEL_NAMES=\"mlp cnn\"  # two\n"
                        "FOGLINE_DISCOVERY=consul\nFOGLINE_GRPC_PORT=9000\nFOGLINE_ALLOW_INSECURE=1\n")
    done = check("device", {"FOGLINE_GRPC_PORT": "9100", "CONSUL_HTTP_ADDR": "127.0.0.1:8500"}, str(env_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "fogline", "--log-level", "INFO", "device", "--host", "0.0.0.0", "--grpc-port", "9100", "--http-port", "8030",
        "--advertise-host", "10.1.3.21", "--discovery", "consul", "--region", "eu-west", "--models",
        str(tmp_path / "models"), "--model", "mlp", "--model", "cnn"]


@pytest.mark.parametrize("tier", TIERS)
def test_every_example_env_file_passes_the_checks(tier: str, tmp_path: Path) -> None:
    env_file = DEPLOY / "env" / f"{tier}.env.example"
    paths = {"FOGLINE_MODELS": str(tmp_path), "FOGLINE_CATALOG": str(DEPLOY / "env" / "cloud.env.example")}
    done = check(tier, {**(paths if tier != "edge" else {}), **tls_files(tmp_path / "tls")}, str(env_file))
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[3] == tier
    assert flag(words, "--tls-cert") == str(tmp_path / "tls" / "cert.pem")


@pytest.mark.parametrize("tier", TIERS)
def test_the_example_env_files_ask_for_tls(tier: str) -> None:
    done = check(tier, {"FOGLINE_MODELS": "/nonexistent", "FOGLINE_CATALOG": "/nonexistent"},
                 str(DEPLOY / "env" / f"{tier}.env.example"))
    assert f"FOGLINE_TLS_CERT=/etc/fogline/tls/{tier}/cert.pem not found" in done.stderr


def test_every_setting_the_scripts_read_is_documented_in_an_example() -> None:
    internal = {"FOGLINE_PROBLEMS", "FOGLINE_CMD", "FOGLINE_CHECK", "FOGLINE_PORTS", "FOGLINE_TLS_VARS",
                "FOGLINE_SECURITY_DOC", "FOGLINE_TIER", "FOGLINE_TIER_COMMAND", "FOGLINE_ENV_FILE"}
    scripts = "".join(path.read_text() for path in DEPLOY.glob("*.sh"))
    examples = "".join(path.read_text() for path in (DEPLOY / "env").glob("*.env.example"))
    settings = set(re.findall(r"\bFOGLINE_[A-Z_]+[A-Z]\b", scripts)) - internal
    documented = set(re.findall(r"^#?(FOGLINE_[A-Z_]+)=", examples, flags=re.MULTILINE))
    assert settings - documented == set()


@pytest.mark.parametrize("tier", TIERS)
def test_tls_settings_become_the_tls_flags(tier: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text("")
    done = check(tier, {**secure(tier, tmp_path), "FOGLINE_CLIENT_AUTH": "optional", "FOGLINE_API_KEYS": str(keys)})
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr
    words = done.stdout.split()
    tls = tmp_path / "tls"
    assert [flag(words, f) for f in ("--host", "--tls-cert", "--tls-key", "--tls-ca", "--client-auth", "--api-keys")] \
        == ["0.0.0.0", str(tls / "cert.pem"), str(tls / "key.pem"), str(tls / "ca.pem"), "optional", str(keys)]
    assert "--join-token-file" not in words and "--enrol" not in words


@pytest.mark.parametrize("given", [["FOGLINE_TLS_CERT"], ["FOGLINE_TLS_CERT", "FOGLINE_TLS_CA"], ["FOGLINE_TLS_KEY"]])
def test_a_partial_tls_set_is_a_problem_naming_what_is_missing(given: list[str], tmp_path: Path) -> None:
    files = tls_files(tmp_path / "tls")
    done = check("edge", {**required("edge", tmp_path), **{name: files[name] for name in given}})
    missing = [name for name in ("FOGLINE_TLS_CERT", "FOGLINE_TLS_KEY", "FOGLINE_TLS_CA") if name not in given]
    assert [line.split()[0] for line in problems(done)] == missing
    assert all("go together" in line for line in problems(done))


def test_tls_files_that_are_not_there_are_problems(tmp_path: Path) -> None:
    files = tls_files(tmp_path / "tls")
    Path(files["FOGLINE_TLS_CERT"]).unlink()
    Path(files["FOGLINE_TLS_CA"]).unlink()
    assert problems(check("worker", {**required("worker", tmp_path), **files})) == [
        f"FOGLINE_TLS_CA={files['FOGLINE_TLS_CA']} not found: the fleet CA certificate (the ca.pem that fogline "
        "certs issue writes)",
        f"FOGLINE_TLS_CERT={files['FOGLINE_TLS_CERT']} not found: issue one (fogline certs issue ... --out "
        f"{tmp_path / 'tls'}), or set FOGLINE_JOIN_TOKEN_FILE and FOGLINE_ENROL to enrol for one"]
    Path(files["FOGLINE_TLS_KEY"]).chmod(0o644)
    (tmp_path / "tls" / "cert.pem").write_text("cert\n")
    (tmp_path / "tls" / "ca.pem").write_text("ca\n")
    assert problems(check("worker", {**required("worker", tmp_path), **files})) == [
        f"FOGLINE_TLS_KEY={files['FOGLINE_TLS_KEY']} can be read by every user: chmod 600 it (or 640, group "
        "fogline): this host's private key"]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::"])
def test_listening_beyond_loopback_without_tls_is_refused(tier: str, host: str, tmp_path: Path) -> None:
    done = check(tier, {**required(tier, tmp_path), "FOGLINE_HOST": host})
    [refused] = problems(done)
    assert refused.startswith(TLS_REFUSED.format(host=host))
    assert "FOGLINE_ALLOW_INSECURE=1" in refused and '"TLS and credentials"' in refused


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.3.4", "localhost", "::1"])
def test_plaintext_on_loopback_needs_nothing(host: str, tmp_path: Path) -> None:
    done = check("edge", {**required("edge", tmp_path), "FOGLINE_HOST": host})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("tier", TIERS)
def test_allow_insecure_starts_in_plaintext_with_a_loud_warning_and_tells_the_process(
        tier: str, tmp_path: Path) -> None:
    fake = tmp_path / "fogline"
    fake.write_text('#!/bin/sh\necho "FOGLINE_ALLOW_INSECURE=$FOGLINE_ALLOW_INSECURE"\necho "$@"\n')
    fake.chmod(0o755)
    env_file = tmp_path / f"{tier}.env"
    env_file.write_text("FOGLINE_ALLOW_INSECURE=1\n")
    done = start(tier, {**required(tier, tmp_path), "FOGLINE_BIN": str(fake)}, str(env_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "FOGLINE_ALLOW_INSECURE=1"
    assert "--tls-cert" not in done.stdout
    assert f"WARNING: FOGLINE_ALLOW_INSECURE=1: fogline {tier} listens on 0.0.0.0 WITHOUT TLS." in done.stderr
    assert "FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA instead" in done.stderr


def test_allow_insecure_takes_only_1(tmp_path: Path) -> None:
    done = check("edge", {**required("edge", tmp_path), "FOGLINE_ALLOW_INSECURE": "yes"})
    assert problems(done) == ["FOGLINE_ALLOW_INSECURE must be 1 (or unset), got 'yes'"]
    done = check("edge", {**required("edge", tmp_path), "FOGLINE_ALLOW_INSECURE": "0"})
    assert problems(done)[0].startswith(TLS_REFUSED.format(host="0.0.0.0"))


def enrolling(tier: str, tmp_path: Path) -> dict[str, str]:
    """TLS settings of a node that has the fleet CA but no certificate yet."""
    files = tls_files(tmp_path / "tls")
    for name in ("FOGLINE_TLS_CERT", "FOGLINE_TLS_KEY"):
        Path(files[name]).unlink()
    return {**required(tier, tmp_path), **files, "FOGLINE_ENROL": "10.1.0.2:8004"}


@pytest.mark.parametrize("tier", ["device", "edge"])
def test_a_join_token_in_the_environment_or_the_env_file_is_never_shown(tier: str, tmp_path: Path) -> None:
    from_env = check(tier, {**enrolling(tier, tmp_path), "FOGLINE_JOIN_TOKEN": TOKEN})
    env_file = private(tmp_path / f"{tier}.env", f"FOGLINE_JOIN_TOKEN={TOKEN}\n")
    from_file = check(tier, enrolling(tier, tmp_path), str(env_file))
    for done in (from_env, from_file):
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout + done.stderr
        words = done.stdout.split()
        assert flag(words, "--enrol") == "10.1.0.2:8004" and "--join-token-file" not in words


def test_the_process_gets_the_join_token_from_its_environment_not_its_command_line(tmp_path: Path) -> None:
    fake = tmp_path / "fogline"
    fake.write_text('#!/bin/sh\n[ "$FOGLINE_JOIN_TOKEN" = "' + TOKEN + '" ] && echo "token in env"\necho "$@"\n')
    fake.chmod(0o755)
    env_file = private(tmp_path / "device.env", f"FOGLINE_JOIN_TOKEN='{TOKEN}'\n")
    done = start("device", {**enrolling("device", tmp_path), "FOGLINE_BIN": str(fake)}, str(env_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "token in env"
    assert TOKEN not in done.stdout + done.stderr


def test_a_join_token_in_an_env_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / "device.env"
    env_file.write_text(f"FOGLINE_JOIN_TOKEN={TOKEN}\n")
    env_file.chmod(0o644)
    done = check("device", enrolling("device", tmp_path), str(env_file))
    assert problems(done) == [f"FOGLINE_JOIN_TOKEN is in {env_file}, which every user can read: chmod 600 it "
                              "(or 640, group fogline), or use FOGLINE_JOIN_TOKEN_FILE"]
    assert TOKEN not in done.stderr


def test_an_env_file_line_that_does_not_parse_is_not_shown(tmp_path: Path) -> None:
    env_file = private(tmp_path / "device.env", f"FOGLINE_JOIN_TOKEN: {TOKEN}\n")
    done = check("device", enrolling("device", tmp_path), str(env_file))
    assert f"{env_file} line 1 cannot be read (expected KEY=VALUE; the line is not shown)" in problems(done)
    assert TOKEN not in done.stderr


def test_a_join_token_file_enrols_a_node_without_a_certificate(tmp_path: Path) -> None:
    token_file = private(tmp_path / "join.token", TOKEN + "\n")
    done = check("device", {**enrolling("device", tmp_path), "FOGLINE_JOIN_TOKEN_FILE": str(token_file)})
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert flag(words, "--join-token-file") == str(token_file) and flag(words, "--enrol") == "10.1.0.2:8004"
    assert flag(words, "--tls-cert") == str(tmp_path / "tls" / "cert.pem")
    assert TOKEN not in done.stdout + done.stderr


def test_a_join_token_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "join.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    done = check("device", {**enrolling("device", tmp_path), "FOGLINE_JOIN_TOKEN_FILE": str(token_file)})
    assert problems(done) == [f"FOGLINE_JOIN_TOKEN_FILE={token_file} can be read by every user: chmod 600 it (or "
                              "640, group fogline): the join token (fogline certs token)"]


def test_enrolling_needs_the_enrolment_address_and_the_token_file(tmp_path: Path) -> None:
    settings = {**enrolling("device", tmp_path), "FOGLINE_JOIN_TOKEN_FILE": str(tmp_path / "absent.token")}
    del settings["FOGLINE_ENROL"]
    assert [line.split()[0] for line in problems(check("device", settings))] == [
        f"FOGLINE_JOIN_TOKEN_FILE={tmp_path / 'absent.token'}", "FOGLINE_ENROL"]
    # A token pasted where the path of its file goes is refused, and not shown.
    done = check("device", {**enrolling("device", tmp_path), "FOGLINE_JOIN_TOKEN_FILE": TOKEN})
    assert problems(done) == ["FOGLINE_JOIN_TOKEN_FILE holds a join token, not a path: write the token to a file "
                              "(mode 600) and name that file"]
    assert TOKEN not in done.stderr


def test_once_enrolled_the_join_token_is_not_passed_on(tmp_path: Path) -> None:
    token_file = private(tmp_path / "join.token", TOKEN)
    done = check("device", {**secure("device", tmp_path), "FOGLINE_JOIN_TOKEN_FILE": str(token_file),
                            "FOGLINE_ENROL": "10.1.0.2:8004"})
    assert done.returncode == 0, done.stderr
    assert "--join-token-file" not in done.stdout.split()
    assert f"the join token is not used; delete {token_file}" in done.stderr
    token_file.unlink()  # ... and the node still starts once it is deleted
    assert check("device", {**secure("device", tmp_path), "FOGLINE_JOIN_TOKEN_FILE": str(token_file)}).returncode == 0


def test_a_join_token_needs_tls(tmp_path: Path) -> None:
    token_file = private(tmp_path / "join.token", TOKEN)
    done = check("device", {**required("device", tmp_path), "FOGLINE_HOST": "127.0.0.1",
                            "FOGLINE_JOIN_TOKEN_FILE": str(token_file)})
    assert [line.split()[0] for line in problems(done)] == ["FOGLINE_JOIN_TOKEN_FILE"]


def fleet_ca(directory: Path) -> Path:
    directory.mkdir()
    (directory / "ca.pem").write_text("ca\n")
    private(directory / "ca.key")
    return directory


@pytest.mark.parametrize("tier", sorted(MASTERS))
def test_a_masters_ca_enrolment_and_admin_settings_become_flags(tier: str, tmp_path: Path) -> None:
    admin_token = private(tmp_path / "admin.token", "s3cret-admin-token\n")
    done = check(tier, secure(tier, tmp_path))
    words = done.stdout.split()
    assert (flag(words, "--admin-port"), flag(words, "--enrol-port")) == MASTERS[tier]
    assert "--ca-dir" not in words and "--admin-token-file" not in words
    done = check(tier, {**secure(tier, tmp_path), "FOGLINE_CA_DIR": str(fleet_ca(tmp_path / "ca")),
                        "FOGLINE_ADMIN_PORT": "9003", "FOGLINE_ENROL_PORT": "0",
                        "FOGLINE_ADMIN_TOKEN_FILE": str(admin_token), "FOGLINE_ENROLLED_CERT_TTL_S": "3600"})
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert [flag(words, f) for f in ("--admin-port", "--enrol-port", "--ca-dir", "--admin-token-file",
                                     "--enrolled-cert-ttl-s")] \
        == ["9003", "0", str(tmp_path / "ca"), str(admin_token), "3600"]
    assert "s3cret-admin-token" not in done.stdout + done.stderr


def test_a_masters_settings_are_checked(tmp_path: Path) -> None:
    admin_token = tmp_path / "admin.token"
    admin_token.write_text("s3cret-admin-token\n")
    admin_token.chmod(0o644)
    (tmp_path / "empty").mkdir()
    done = check("cloud", {**secure("cloud", tmp_path), "FOGLINE_CA_DIR": str(tmp_path / "empty"),
                           "FOGLINE_ADMIN_TOKEN_FILE": str(admin_token), "FOGLINE_ENROLLED_CERT_TTL_S": "0",
                           "FOGLINE_ENROL_PORT": "8011"})
    assert problems(done) == [
        "FOGLINE_ENROL_PORT and FOGLINE_GRPC_PORT are both port 8011: give each its own",
        f"FOGLINE_CA_DIR={tmp_path / 'empty'} has no ca.pem and ca.key: the fleet CA directory (fogline certs init DIR)",
        f"FOGLINE_ADMIN_TOKEN_FILE={admin_token} can be read by every user: chmod 600 it (or 640, group fogline): "
        "the admin API's bearer token (a long random string)",
        "FOGLINE_ENROLLED_CERT_TTL_S must be a number of seconds above 0, got '0'"]
    assert "s3cret-admin-token" not in done.stderr
    done = check("cloud", {**required("cloud", tmp_path), "FOGLINE_HOST": "127.0.0.1",
                           "FOGLINE_CA_DIR": str(fleet_ca(tmp_path / "ca"))})
    assert problems(done) == ["FOGLINE_CA_DIR needs FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA: a master "
                              "signs enrolments only over TLS"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("tier", TIERS)
def test_the_systemd_units_verify(tier: str, tmp_path: Path) -> None:
    # NOTE: verify checks that ExecStart exists: point it at this checkout instead of /opt/fogline.
    unit = (DEPLOY / "systemd" / f"fogline-{tier}.service").read_text().replace("/opt/fogline/deploy", str(DEPLOY))
    (tmp_path / f"fogline-{tier}.service").write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / f"fogline-{tier}.service")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("tier", TIERS)
def test_the_systemd_units_let_the_process_write_its_certificate_and_keep_their_hardening(tier: str) -> None:
    unit = (DEPLOY / "systemd" / f"fogline-{tier}.service").read_text()
    for line in ("ReadWritePaths=-/etc/fogline/tls", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "ReadOnlyPaths=/opt/fogline /etc/fogline"):
        assert line in unit.splitlines()
    assert not re.search(r"^Environment=.*TOKEN=", unit, flags=re.MULTILINE)
