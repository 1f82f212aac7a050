"""Settings: one TOML file plus `RUMLINE_*` environment variables, validated at start.

Precedence, lowest to highest: defaults, the TOML file, the environment, command-line flags.
Every setting has a TOML key `[section] key` and the environment variable
`RUMLINE_<SECTION>_<KEY>`; the stable names of DESIGN.md (`RUMLINE_HOST`, `RUMLINE_PORT`,
`RUMLINE_DATA_DIR`, `RUMLINE_WORKERS`, `RUMLINE_SESSION_TIMEOUT`, `RUMLINE_API_TOKEN`,
`RUMLINE_ALLOWED_ORIGINS`) are the short aliases listed in `env=` below and win over the long
form. Durations are written `500ms`, `2s`, `30m`, `6h`, `1d`; sizes `65536`, `64KiB`, `1GiB`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting that is missing, unknown or invalid; the message names where it came from."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|K|KB|KiB|M|MB|MiB|G|GB|GiB|T|TB|TiB)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40}
_APDEX_TYPES = ("load", "xhr", "custom")


def parse_duration_ms(value: Any) -> int:
    """`30m` → 1_800_000. A bare number is refused: the unit must be explicit."""
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return round(float(m.group(1)) * _DURATION_MS[m.group(2)])
    raise ValueError(f"{value!r} is not a duration (write e.g. 500ms, 2s, 30m, 6h)")


def parse_size(value: Any) -> int:
    """`64KiB` → 65536 (K, M, G, T are binary multiples, with or without `iB`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "").lower()[:1]
        return int(m.group(1)) << _SIZE_SHIFT[unit]
    raise ValueError(f"{value!r} is not a size (write e.g. 65536, 64KiB, 1GiB)")


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueError(f"{value!r} is not an integer")


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None


def _parse_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not a string")


def _parse_optional_str(value: Any) -> str | None:
    value = _parse_str(value)
    return value or None


def _parse_path(value: Any) -> Path:
    return Path(_parse_str(value)).expanduser()


def _parse_list(value: Any) -> tuple[str, ...]:
    """A TOML array of strings, or a comma-separated environment value."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError(f"{value!r} is not a list of strings")


def _parse_threshold_ms(value: Any) -> int:
    """Apdex thresholds: a duration (`3s`) or a number of milliseconds (`3000`)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return round(value)
    return parse_duration_ms(value)


def _parse_thresholds(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping) or set(value) != {"t", "f"}:
        raise ValueError(f"{value!r} must be a table with exactly `t` and `f`")
    t, f = _parse_threshold_ms(value["t"]), _parse_threshold_ms(value["f"])
    if t > f:
        raise ValueError(f"t ({t} ms) is greater than f ({f} ms)")
    return {"t": t, "f": f}


def _parse_apdex(value: Any) -> dict[str, dict[str, int]]:
    value = _as_table(value)
    unknown = set(value) - set(_APDEX_TYPES)
    if unknown:
        raise ValueError(f"unknown action type(s) {sorted(unknown)}; known: {_APDEX_TYPES}")
    return {kind: _parse_thresholds(thresholds) for kind, thresholds in value.items()}


def _parse_key_actions(value: Any) -> dict[str, dict[str, dict[str, int]]]:
    value = _as_table(value)
    return {
        app: {name: _parse_thresholds(t) for name, t in _as_table(actions).items()}
        for app, actions in value.items()
    }


def _parse_weights(value: Any) -> dict[str, float]:
    value = _as_table(value)
    unknown = set(value) - {"action", "error", "rage_click"}
    if unknown:
        raise ValueError(f"unknown weight(s) {sorted(unknown)}; known: action, error, rage_click")
    return {name: _parse_float(weight) for name, weight in value.items()}


def _parse_app_origins(value: Any) -> dict[str, tuple[str, ...]]:
    return {app: _parse_list(origins) for app, origins in _as_table(value).items()}


def _as_table(value: Any) -> Mapping[str, Any]:
    """A TOML table, or (from the environment) the same written as JSON."""
    if isinstance(value, str):
        import orjson

        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError(f"{value!r} is not a JSON object") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a table")
    return value


def _setting(
    section: str, key: str, default: Any, parse: Callable[[Any], Any], env: str | None = None
) -> Any:
    """A field read from TOML `[section] key`, `RUMLINE_<SECTION>_<KEY>` and `env` if given."""
    metadata = {"section": section, "key": key, "parse": parse, "env": env}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Every setting of the collector. Durations are milliseconds, sizes bytes."""

    # [server]
    host: str = _setting("server", "host", "127.0.0.1", _parse_str, env="RUMLINE_HOST")
    port: int = _setting("server", "port", 8080, _parse_int, env="RUMLINE_PORT")
    workers: int = _setting("server", "workers", 1, _parse_int, env="RUMLINE_WORKERS")
    # SIGTERM: stop accepting, drain, commit, checkpoint, and exit within this time.
    shutdown_timeout_ms: int = _setting("server", "shutdown_timeout", 10_000, parse_duration_ms)
    # An idle keep-alive connection, and a new one that has not sent its request headers yet
    # (a slowloris), is closed after this. Keep it above the idle timeout of a load balancer
    # in front (60s on common ones), or the balancer may reuse a connection being closed.
    keepalive_timeout_ms: int = _setting("server", "keepalive_timeout", 75_000, parse_duration_ms)

    # [log]
    log_level: str = _setting("log", "level", "info", _parse_str)
    log_format: str = _setting("log", "format", "text", _parse_str)

    # [storage]
    data_dir: Path = _setting(
        "storage", "data_dir", Path("rumline-data"), _parse_path, env="RUMLINE_DATA_DIR"
    )
    # The LMDB map starts at map_size and doubles when full, up to max_map_size.
    map_size: int = _setting("storage", "map_size", 1 << 30, parse_size)
    max_map_size: int = _setting("storage", "max_map_size", 1 << 40, parse_size)
    # The longest time between checkpoints while beacons come in (under load they come
    # sooner: once the WAL since the last one is as large as it, see pipeline.py).
    checkpoint_interval_ms: int = _setting(
        "storage", "checkpoint_interval", 30_000, parse_duration_ms
    )
    # false skips the fsync of every commit: acknowledged beacons are then NOT durable across
    # a machine crash (a process crash is still fine). Only to measure the CPU path.
    sync: bool = _setting("storage", "sync", True, _parse_bool)
    # Closed sessions that started longer ago than this are deleted (0s = kept forever), by a
    # background task of the sessionizer every retention_interval (collector/retention.py).
    retention_ms: int = _setting("storage", "retention", 0, parse_duration_ms)
    retention_interval_ms: int = _setting(
        "storage", "retention_interval", 600_000, parse_duration_ms
    )
    # Ingest stops (503 storage_full) when less than this would be left in the map (at
    # max_map_size) or on its disk, so that the sessionizer can still write sessions and the
    # checkpoint that lets it trim the WAL, which frees space again.
    storage_reserve_bytes: int = _setting("storage", "reserve", 256 << 20, parse_size)

    # [ingest]
    allowed_origins: tuple[str, ...] = _setting(
        "ingest", "allowed_origins", (), _parse_list, env="RUMLINE_ALLOWED_ORIGINS"
    )
    # Per app: the origins whose pages may send beacons for it (an app not listed here
    # follows allowed_origins). Checked once the app is known, after the body is read.
    app_origins: dict[str, tuple[str, ...]] = _setting(
        "ingest", "app_origins", {}, _parse_app_origins
    )
    max_body_bytes: int = _setting("ingest", "max_body", 64 << 10, parse_size)
    max_large_body_bytes: int = _setting("ingest", "max_large_body", 1 << 20, parse_size)
    max_decompressed_bytes: int = _setting("ingest", "max_decompressed", 1 << 20, parse_size)
    max_events: int = _setting("ingest", "max_events", 500, _parse_int)
    # Bytes of request bodies held at once (read, inflated, waiting for the commit); past it
    # new requests get 503 + Retry-After before their body is read.
    max_inflight_bytes: int = _setting("ingest", "max_inflight_bytes", 256 << 20, parse_size)
    # A request body not received completely within this is refused (408): a client that
    # trickles its body (a slowloris) holds a connection no longer than this.
    body_timeout_ms: int = _setting("ingest", "body_timeout", 30_000, parse_duration_ms)
    respect_dnt: bool = _setting("ingest", "respect_dnt", True, _parse_bool)
    # When set, user tags are replaced by HMAC-SHA256(key, tag) in the front, before the WAL:
    # the tag itself never reaches the disk; the query API hashes the tag it is asked for.
    user_tag_hash_key: str | None = _setting(
        "ingest", "user_tag_hash_key", None, _parse_optional_str
    )
    # Requests waiting for a WAL commit; beyond this the collector answers 503 + Retry-After.
    queue_max_requests: int = _setting("ingest", "queue_max_requests", 20_000, _parse_int)
    batch_max_requests: int = _setting("ingest", "batch_max_requests", 2_000, _parse_int)
    # A group commit is one WAL entry, which the sessionizer takes in one `ingest` call: its
    # size bounds how many sessions one call can close at once (the memory of its result).
    batch_max_bytes: int = _setting("ingest", "batch_max_bytes", 2 << 20, parse_size)
    # Under concurrent load, how long a commit may wait to gather a full batch (0 = never).
    commit_delay_ms: int = _setting("ingest", "commit_delay", 0, parse_duration_ms)
    # Token buckets, requests per second (0 = off) and burst size.
    rate_limit_ip: float = _setting("ingest", "rate_limit_ip", 0.0, _parse_float)
    rate_limit_ip_burst: int = _setting("ingest", "rate_limit_ip_burst", 100, _parse_int)
    rate_limit_app: float = _setting("ingest", "rate_limit_app", 0.0, _parse_float)
    rate_limit_app_burst: int = _setting("ingest", "rate_limit_app_burst", 1_000, _parse_int)
    # Grafana Faro's `apiKey`: when set, `/collect` requires it in the `x-api-key` header.
    faro_api_key: str | None = _setting("ingest", "faro_api_key", None, _parse_optional_str)
    # Load balancers / proxies (IPs or CIDRs) whose X-Forwarded-For is believed: the client
    # address is then the right-most one in it that is not such a proxy. Empty: the peer.
    trusted_proxies: tuple[str, ...] = _setting("ingest", "trusted_proxies", (), _parse_list)

    # [session] — the core's rules (docs/sessionizer.md §8)
    session_timeout_ms: int = _setting(
        "session", "timeout", 1_800_000, parse_duration_ms, env="RUMLINE_SESSION_TIMEOUT"
    )
    session_max_duration_ms: int = _setting(
        "session", "max_duration", 21_600_000, parse_duration_ms
    )
    session_max_actions: int = _setting("session", "max_actions", 200, _parse_int)
    session_max_open: int = _setting("session", "max_open_sessions", 500_000, _parse_int)
    apdex: dict[str, dict[str, int]] = _setting("session", "apdex", {}, _parse_apdex)
    key_actions: dict[str, dict[str, dict[str, int]]] = _setting(
        "session", "key_actions", {}, _parse_key_actions
    )
    frustrated_ratio: float = _setting("session", "frustrated_ratio", 0.30, _parse_float)
    satisfied_ratio: float = _setting("session", "satisfied_ratio", 0.50, _parse_float)
    last_action_rule: bool = _setting("session", "last_action_rule", True, _parse_bool)
    weights: dict[str, float] = _setting("session", "weights", {}, _parse_weights)
    mask_ip: bool = _setting("session", "mask_ip", True, _parse_bool)
    scrub_pii: bool = _setting("session", "scrub_pii", True, _parse_bool)
    scrub_patterns: tuple[str, ...] = _setting("session", "scrub_patterns", (), _parse_list)
    ua_cache_size: int = _setting("session", "ua_cache_size", 4096, _parse_int)
    # Sessions the sessionizer closes for their timeout per core call and write transaction,
    # at most: after a long outage every open session is due at once (~4.7 KiB each in
    # memory until written).
    max_closed_per_write: int = _setting("session", "max_closed_per_write", 10_000, _parse_int)
    # How often the sessionizer closes timed-out sessions (a tick in the WAL each time).
    flush_interval_ms: int = _setting("session", "flush_interval", 500, parse_duration_ms)

    # [api]
    api_token: str | None = _setting(
        "api", "token", None, _parse_optional_str, env="RUMLINE_API_TOKEN"
    )
    api_default_limit: int = _setting("api", "default_limit", 50, _parse_int)
    api_max_limit: int = _setting("api", "max_limit", 1_000, _parse_int)

    # [metrics] — `app` label values: the listed apps, else the first max_apps seen, then "other".
    metrics_apps: tuple[str, ...] = _setting("metrics", "apps", (), _parse_list)
    metrics_max_apps: int = _setting("metrics", "max_apps", 100, _parse_int)

    def __post_init__(self) -> None:
        _validate(self)

    @functools.cached_property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)

    @functools.cached_property
    def gate_origins(self) -> frozenset[str] | None:
        """The origins a request may come from before its app is known (the preflight, the
        body not read yet): None when any may (the app's own list is checked later)."""
        lists = (self.allowed_origins, *self.app_origins.values())
        if not self.allowed_origins or any("*" in origins for origins in lists):
            return None
        return frozenset(origin for origins in lists for origin in origins)

    def core_settings(self) -> dict[str, Any]:
        """The `Sessionizer` settings (docs/sessionizer.md §8); unset tables keep the core's."""
        core: dict[str, Any] = {
            "timeout_ms": self.session_timeout_ms,
            "max_duration_ms": self.session_max_duration_ms,
            "max_actions": self.session_max_actions,
            "max_open_sessions": self.session_max_open,
            "max_events": self.max_events,
            "key_actions": self.key_actions,
            "frustrated_ratio": self.frustrated_ratio,
            "satisfied_ratio": self.satisfied_ratio,
            "last_action_rule": self.last_action_rule,
            "mask_ip": self.mask_ip,
            "scrub_pii": self.scrub_pii,
            "scrub_patterns": list(self.scrub_patterns),
            "ua_cache_size": self.ua_cache_size,
            "max_closed_per_call": self.max_closed_per_write,
        }
        if self.apdex:
            core["apdex"] = {
                kind: self.apdex.get(kind, {"t": 3_000, "f": 12_000}) for kind in _APDEX_TYPES
            }
        if self.weights:
            core["weights"] = {"action": 3.0, "error": 1.0, "rage_click": 2.0} | self.weights
        return core


def _is_origin(value: str) -> bool:
    return value == "*" or bool(re.fullmatch(r"https?://[^/\s]+", value))


def _validate(s: Settings) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    check(0 <= s.port <= 65535, f"[server] port: {s.port} is not a TCP port (0-65535)")
    check(s.workers >= 1, f"[server] workers: {s.workers} must be at least 1")
    check(s.shutdown_timeout_ms > 0, "[server] shutdown_timeout must be positive")
    check(s.keepalive_timeout_ms >= 1_000, "[server] keepalive_timeout must be at least 1s")
    check(
        s.log_level.lower() in ("debug", "info", "warning", "error"),
        f"[log] level: {s.log_level!r} is not one of debug, info, warning, error",
    )
    check(s.log_format in ("text", "json"), f"[log] format: {s.log_format!r} is not text or json")
    check(s.map_size >= 1 << 20, "[storage] map_size must be at least 1MiB")
    check(s.max_map_size >= s.map_size, "[storage] max_map_size is smaller than map_size")
    check(s.checkpoint_interval_ms > 0, "[storage] checkpoint_interval must be positive")
    check(s.retention_interval_ms > 0, "[storage] retention_interval must be positive")
    check(
        s.storage_reserve_bytes <= s.max_map_size // 2,
        "[storage] reserve must be at most half of max_map_size",
    )
    for origin in s.allowed_origins:
        check(
            _is_origin(origin),
            f"[ingest] allowed_origins: {origin!r} is not an origin like https://shop.example.com",
        )
    for app, origins in s.app_origins.items():
        check(
            bool(re.fullmatch(r"[A-Za-z0-9._-]{1,64}", app)),
            f"[ingest.app_origins] {app!r} is not an app name ([A-Za-z0-9._-], 1-64 characters)",
        )
        for origin in origins:
            check(
                _is_origin(origin),
                f"[ingest.app_origins] {app}: {origin!r} is not an origin like "
                "https://shop.example.com",
            )
    check(s.max_body_bytes > 0, "[ingest] max_body must be positive")
    check(s.max_large_body_bytes > 0, "[ingest] max_large_body must be positive")
    check(
        s.max_decompressed_bytes >= s.max_body_bytes,
        "[ingest] max_decompressed is smaller than max_body",
    )
    check(s.max_events >= 1, "[ingest] max_events must be at least 1")
    check(
        s.max_inflight_bytes >= s.max_large_body_bytes + s.max_decompressed_bytes,
        "[ingest] max_inflight_bytes must hold at least one largest body and its inflated form",
    )
    check(
        s.user_tag_hash_key is None or len(s.user_tag_hash_key.encode()) >= 16,
        "[ingest] user_tag_hash_key must be at least 16 bytes (a random secret)",
    )
    check(s.body_timeout_ms > 0, "[ingest] body_timeout must be positive")
    check(s.queue_max_requests >= 1, "[ingest] queue_max_requests must be at least 1")
    check(s.batch_max_requests >= 1, "[ingest] batch_max_requests must be at least 1")
    check(
        s.batch_max_bytes >= s.max_large_body_bytes,
        "[ingest] batch_max_bytes is smaller than max_large_body",
    )
    check(s.rate_limit_ip >= 0 and s.rate_limit_app >= 0, "[ingest] rate limits must be >= 0")
    for proxy in s.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"[ingest] trusted_proxies: {proxy!r} is not an IP or CIDR") from None
    check(
        s.rate_limit_ip_burst >= 1 and s.rate_limit_app_burst >= 1,
        "[ingest] rate limit bursts must be at least 1",
    )
    check(s.session_timeout_ms > 0, "[session] timeout must be positive")
    check(s.session_max_duration_ms > 0, "[session] max_duration must be positive")
    check(s.session_max_actions >= 1, "[session] max_actions must be at least 1")
    check(s.session_max_open >= 1, "[session] max_open_sessions must be at least 1")
    check(0 <= s.frustrated_ratio <= 1, "[session] frustrated_ratio must be within 0..1")
    check(0 <= s.satisfied_ratio <= 1, "[session] satisfied_ratio must be within 0..1")
    for pattern in s.scrub_patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"[session] scrub_patterns: {pattern!r}: {err}") from None
    check(s.ua_cache_size >= 0, "[session] ua_cache_size must be >= 0")
    check(s.max_closed_per_write >= 1, "[session] max_closed_per_write must be at least 1")
    check(
        0 < s.flush_interval_ms <= 60_000,
        "[session] flush_interval must be within 1ms..60s",
    )
    check(
        1 <= s.api_default_limit <= s.api_max_limit,
        "[api] default_limit must be within 1..max_limit",
    )
    check(s.metrics_max_apps >= 1, "[metrics] max_apps must be at least 1")


def _fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def env_names(f: dataclasses.Field[Any]) -> list[str]:
    """The environment variables of one setting, the one that wins first."""
    long = f"RUMLINE_{f.metadata['section']}_{f.metadata['key']}".upper()
    short = f.metadata["env"]
    return [short, long] if short and short != long else [long]


def load_settings(
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults ← TOML file (`config_path`, else `RUMLINE_CONFIG`) ← environment ← `overrides`.

    `overrides` are already-typed values keyed by field name (the CLI flags). Raises
    `ConfigError` naming the file, key or variable at fault.
    """
    env = os.environ if env is None else env
    if config_path is None and env.get("RUMLINE_CONFIG"):
        config_path = Path(env["RUMLINE_CONFIG"])
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(_from_toml(config_path))
    for f in _fields():
        for name in env_names(f):
            if name in env:
                values[f.name] = _parse(f, env[name], name)
                break
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except TypeError as err:  # an unknown override name: a programming error, say which
        raise ConfigError(str(err)) from None


def _parse(f: dataclasses.Field[Any], raw: Any, where: str) -> Any:
    try:
        return f.metadata["parse"](raw)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    by_key = {(f.metadata["section"], f.metadata["key"]): f for f in _fields()}
    sections = {section for section, _ in by_key}
    values: dict[str, Any] = {}
    for section, table in document.items():
        if section not in sections or not isinstance(table, dict):
            raise ConfigError(
                f"config file {path}: unknown section [{section}]; "
                f"known: {', '.join(sorted(sections))}"
            )
        for key, raw in table.items():
            f = by_key.get((section, key))
            if f is None:
                known = sorted(k for s, k in by_key if s == section)
                raise ConfigError(
                    f"config file {path}: unknown key [{section}] {key}; known: {', '.join(known)}"
                )
            values[f.name] = _parse(f, raw, f"config file {path}: [{section}] {key}")
    return values
