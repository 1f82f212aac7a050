"""`rumline serve` / `python -m collector serve`: flags, config errors, structured logs."""

from __future__ import annotations

import subprocess
import sys

import orjson

from tests.conftest import REPO, StartServer


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_serve_help_lists_the_stable_flags():
    result = run("serve", "--help")
    assert result.returncode == 0
    for flag in ("--host", "--port", "--data-dir", "--config", "--workers", "--log-format"):
        assert flag in result.stdout


def test_invalid_configuration_exits_2_with_a_clear_message(tmp_path):
    env = {"RUMLINE_SESSION_TIMEOUT": "soon", "PATH": "/usr/bin:/bin"}
    result = run("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "configuration error: RUMLINE_SESSION_TIMEOUT: 'soon' is not a duration" in (
        result.stderr
    )
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[server]\nprot = 1\n")
    result = run("serve", "--config", str(bad_file), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "unknown key [server] prot" in result.stderr


def test_bad_flag_value_is_a_usage_error():
    result = run("serve", "--port", "eighty")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def test_json_log_lines(start_server: StartServer):
    server = start_server(args=("--log-format", "json"))
    assert server.terminate() == 0
    lines = [orjson.loads(line) for line in server.log().splitlines() if line.strip()]
    messages = [line["msg"] for line in lines]
    assert "listening" in messages and "recovered" in messages and "stopped" in messages
    listening = lines[messages.index("listening")]
    assert listening["url"] == f"http://127.0.0.1:{server.port}"
    assert listening["level"] == "info"
    assert {"ts", "logger", "pid"} <= set(listening)
    # the user-agent parser is built before the collector is ready, not on the first beacon
    recovering = lines[messages.index("recovering")]
    assert isinstance(recovering["user_agent_parser_s"], float)
    assert messages.index("recovering") < messages.index("recovered")


def test_workers_give_up_when_the_port_is_taken(tmp_path):
    """A front that cannot bind keeps exiting at start: the supervisor stops, exit code 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), "--workers", "2", "--data-dir",
                     str(tmp_path), env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 1
    assert "child keeps exiting at start; giving up" in result.stderr
