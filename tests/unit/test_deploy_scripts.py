"""The deploy/ scripts' argument checks (no process is started: --check), and the systemd units."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TIERS = ("cloud", "worker", "edge", "device")
BASE = {"PATH": os.environ["PATH"], "FOGLINE_ENV_FILE": "/nonexistent/fogline.env"}


def check(tier: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DEPLOY / f"fogline-{tier}.sh"), "--check", *args], env={**BASE, **env},
                          capture_output=True, text=True, timeout=30, check=False)


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
    assert [line.split()[1] for line in done.stderr.splitlines()[1:]] == missing


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


def test_an_env_file_gives_the_command_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    env_file = tmp_path / "device.env"
    env_file.write_text("# a comment\nFOGLINE_ADVERTISE_HOST=10.1.3.21\nFOGLINE_REGION='eu-west'\n"
                        f"FOGLINE_MODELS={tmp_path / 'models'}\nFOGLINE_MODEL_NAMES=\"mlp cnn\"\n"
                        "FOGLINE_DISCOVERY=consul\nFOGLINE_GRPC_PORT=9000\n")
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
    done = check(tier, paths if tier != "edge" else {}, str(env_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[3] == tier


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("tier", TIERS)
def test_the_systemd_units_verify(tier: str, tmp_path: Path) -> None:
    # NOTE: verify checks that ExecStart exists: point it at this checkout instead of /opt/fogline.
    unit = (DEPLOY / "systemd" / f"fogline-{tier}.service").read_text().replace("/opt/fogline/deploy", str(DEPLOY))
    (tmp_path / f"fogline-{tier}.service").write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / f"fogline-{tier}.service")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
