"""Settings: defaults, TOML, RUMLINE_* env (stable names), flags, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import Sessionizer
from collector.config import (
    ConfigError,
    Settings,
    load_settings,
    parse_duration_ms,
    parse_size,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rumline.toml"
    path.write_text(text)
    return path


def test_embedded_default_needs_nothing():
    s = load_settings(env={})
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8080, 1)
    assert s.data_dir == Path("rumline-data")
    assert s.allowed_origins == ()
    assert s.api_token is None
    assert s.session_timeout_ms == 30 * 60_000
    assert s.max_body_bytes == 64 * 1024
    assert s.max_events == 500


def test_stable_names_from_toml(tmp_path: Path):
    path = write(
        tmp_path,
        """
[server]
host = "0.0.0.0"
port = 9000
workers = 2
[storage]
data_dir = "/var/lib/rumline"
[session]
timeout = "2s"
[api]
token = "secret"
[ingest]
allowed_origins = ["https://shop.example.com"]
""",
    )
    s = load_settings(path, env={})
    assert (s.host, s.port, s.workers) == ("0.0.0.0", 9000, 2)
    assert s.data_dir == Path("/var/lib/rumline")
    assert s.session_timeout_ms == 2000
    assert s.api_token == "secret"
    assert s.allowed_origins == ("https://shop.example.com",)


def test_stable_env_names_win_over_toml(tmp_path: Path):
    path = write(tmp_path, '[server]\nport = 9000\n[session]\ntimeout = "1h"\n')
    env = {
        "RUMLINE_CONFIG": str(path),
        "RUMLINE_HOST": "0.0.0.0",
        "RUMLINE_PORT": "9100",
        "RUMLINE_DATA_DIR": "/tmp/r",
        "RUMLINE_WORKERS": "3",
        "RUMLINE_SESSION_TIMEOUT": "30m",
        "RUMLINE_API_TOKEN": "t",
        "RUMLINE_ALLOWED_ORIGINS": "https://a.example, https://b.example",
    }
    s = load_settings(env=env)
    assert (s.host, s.port, s.workers) == ("0.0.0.0", 9100, 3)
    assert s.data_dir == Path("/tmp/r")
    assert s.session_timeout_ms == 1_800_000
    assert s.api_token == "t"
    assert s.allowed_origins == ("https://a.example", "https://b.example")


def test_long_env_names_and_flags(tmp_path: Path):
    env = {"RUMLINE_INGEST_MAX_BODY": "32KiB", "RUMLINE_SERVER_PORT": "7000"}
    s = load_settings(env=env, overrides={"port": 7001, "host": None})
    assert s.max_body_bytes == 32 * 1024
    assert s.port == 7001  # a flag wins over the environment
    assert s.host == "127.0.0.1"  # an unset flag changes nothing
    # The short stable name wins over the long form of the same setting.
    assert load_settings(env={"RUMLINE_PORT": "1", "RUMLINE_SERVER_PORT": "2"}).port == 1


@pytest.mark.parametrize(
    ("text", "ms"), [("500ms", 500), ("2s", 2000), ("30m", 1_800_000), ("6h", 21_600_000),
                     ("1d", 86_400_000), ("1.5s", 1500)],
)  # fmt: skip
def test_durations(text: str, ms: int):
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["30", "5x", "", "-1s", 30])
def test_bad_durations(bad: object):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms(bad)


@pytest.mark.parametrize(
    ("text", "size"), [("65536", 65536), ("64KiB", 65536), ("64K", 65536), ("1MiB", 1 << 20),
                       ("1 GiB", 1 << 30), (4096, 4096)],
)  # fmt: skip
def test_sizes(text: object, size: int):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUMLINE_SESSION_TIMEOUT": "soon"}, "RUMLINE_SESSION_TIMEOUT: 'soon' is not a duration"),
        ({"RUMLINE_PORT": "http"}, "RUMLINE_PORT: 'http' is not an integer"),
        ({"RUMLINE_PORT": "70000"}, "port: 70000 is not a TCP port"),
        ({"RUMLINE_WORKERS": "0"}, "workers: 0 must be at least 1"),
        ({"RUMLINE_SESSION_MAX_CLOSED_PER_WRITE": "0"}, "max_closed_per_write must be at least 1"),
        ({"RUMLINE_ALLOWED_ORIGINS": "shop.example.com"}, "is not an origin like"),
        ({"RUMLINE_LOG_FORMAT": "xml"}, "is not text or json"),
        ({"RUMLINE_INGEST_MAX_BODY": "lots"}, "is not a size"),
        ({"RUMLINE_SESSION_MASK_IP": "maybe"}, "is not a boolean"),
        ({"RUMLINE_INGEST_APP_ORIGINS": '{"shop": ["shop.example.com"]}'},
         r"\[ingest.app_origins\] shop: 'shop.example.com' is not an origin"),
        ({"RUMLINE_INGEST_APP_ORIGINS": '{"my shop": ["https://a.example"]}'},
         "'my shop' is not an app name"),
        ({"RUMLINE_INGEST_APP_ORIGINS": '["https://a.example"]'}, "is not a table"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], message: str):
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_toml_key_and_section(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"unknown key \[server\] prot; known: host, .*port"):
        load_settings(write(tmp_path, "[server]\nprot = 1\n"), env={})
    with pytest.raises(ConfigError, match=r"unknown section \[sever\]"):
        load_settings(write(tmp_path, "[sever]\nport = 1\n"), env={})
    with pytest.raises(ConfigError, match="config file .*: Expected"):
        load_settings(write(tmp_path, "[server\n"), env={})
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "missing.toml", env={})


def test_session_rules_reach_the_core(tmp_path: Path):
    path = write(
        tmp_path,
        """
[session]
timeout = "10m"
max_duration = "2h"
max_actions = 50
frustrated_ratio = 0.4
last_action_rule = false
scrub_patterns = ["order-[0-9]+"]
[session.apdex]
load = { t = "1s", f = "4s" }
xhr = { t = 500, f = 2000 }
[session.key_actions.shop]
"click on 'Place order'" = { t = "2s", f = "8s" }
[session.weights]
rage_click = 4
""",
    )
    s = load_settings(path, env={})
    core = s.core_settings()
    assert core["timeout_ms"] == 600_000
    assert core["apdex"]["load"] == {"t": 1000, "f": 4000}
    assert core["apdex"]["xhr"] == {"t": 500, "f": 2000}
    assert core["apdex"]["custom"] == {"t": 3000, "f": 12000}
    assert core["key_actions"] == {"shop": {"click on 'Place order'": {"t": 2000, "f": 8000}}}
    assert core["weights"] == {"action": 3.0, "error": 1.0, "rage_click": 4.0}
    Sessionizer(core)  # the real core accepts every key and value
    Sessionizer(Settings().core_settings())


def test_bad_apdex_thresholds(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"\[session\] apdex: .*greater than f"):
        load_settings(write(tmp_path, "[session.apdex]\nload = { t = 5000, f = 100 }\n"), env={})
    with pytest.raises(ConfigError, match="unknown action type"):
        load_settings(write(tmp_path, "[session.apdex]\nscroll = { t = 1, f = 2 }\n"), env={})


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_every_setting_is_documented():
    """docs/configuration.md has a row for every setting, with its TOML key and variable."""
    import dataclasses

    from collector.config import env_names

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `[")]
    for f in dataclasses.fields(Settings):
        key = f"`[{f.metadata['section']}] {f.metadata['key']}`"
        [row] = [r for r in rows if r.startswith(f"| {key} |")] or [None]
        assert row is not None, f"{key} is not in docs/configuration.md"
        assert f"`{env_names(f)[0]}`" in row, f"{key}: its variable {env_names(f)[0]} is not"
