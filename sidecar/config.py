"""Configuration: the one module that reads the YAML file and the environment.

`load_config(path)` parses and validates everything at start-up and raises `ConfigError`
listing every problem, each naming its field (``flag.weights: must sum to 10000 ...``).
`sidecar check-config FILE` runs exactly this without serving.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.core.routing import BASIS_POINTS, Flag, FlagError, SegmentRule

LOG_LEVELS = ("debug", "info", "warning", "error")
ROLES = ("viewer", "operator")


class ConfigError(ValueError):
    """The configuration is invalid; `problems` lists each one, naming its field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration {source}:\n{lines}")


@dataclass(frozen=True)
class VariantSpec:
    """A model variant: which upstream model server, model name and version answer it."""

    name: str
    address: str
    model_name: str
    model_version: str = ""


@dataclass(frozen=True)
class ShadowConfig:
    variant: str
    sample_bp: int = BASIS_POINTS
    max_in_flight: int = 64
    deadline: float = 1.0
    comparator: str = "auto"
    rtol: float = 1e-5
    atol: float = 1e-8
    keep_examples: int = 20
    breaker_failures: int = 10
    breaker_cooldown: float = 1.0
    # Also mirror this share of requests to the stable model itself (a noise mirror): the
    # model's own disagreement is subtracted from the candidate's (Diffy). 0: off.
    noise_sample_bp: int = 0


@dataclass(frozen=True)
class MetricConfig:
    """One outcome metric of the experiment (`experiment.metrics[]`)."""

    name: str
    kind: str  # bool | number
    minimum_effect: float
    higher_is_better: bool = True
    baseline: float | None = None
    tau_squared: float | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    """`experiment:` — A/B analysis of the outcomes apps report back."""

    metrics: tuple[MetricConfig, ...] = ()
    segments: tuple[str, ...] = ()
    correction: str = "holm"
    alpha: float = 0.05
    power: float = 0.8
    srm_threshold: float = 0.001
    look_interval: float = 10.0
    gate_metric: str = ""
    max_requests: int = 200_000
    ttl_seconds: float = 3600.0


@dataclass(frozen=True)
class DriftConfig:
    """`drift:` — input-feature and prediction drift against a reference window."""

    enabled: bool = True
    sample_every: int = 10  # one request in ten: drift needs a sample, not every request
    reference_size: int = 5000
    window_size: int = 5000
    bins: int = 10
    moderate: float = 0.1
    major: float = 0.25
    reference_file: str = ""  # JSON {series name: [values]}; empty: the baseline


@dataclass(frozen=True)
class UpstreamConfig:
    default_deadline: float = 5.0
    max_deadline: float = 30.0
    connect_timeout: float = 5.0


@dataclass(frozen=True)
class ServerConfig:
    max_message_bytes: int = 4 * 1024 * 1024
    shutdown_grace: float = 10.0
    log_level: str = "info"
    log_requests: bool = False


@dataclass(frozen=True)
class TokenSpec:
    """A Control credential: who (`name`), what they may do (`role`), and the SHA-256 of
    the bearer token (the token itself is never kept or logged)."""

    name: str
    role: str
    sha256: bytes = field(repr=False)


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    client_ca_file: str = ""  # set: clients must present a certificate signed by it (mTLS)


@dataclass(frozen=True)
class ControlConfig:
    tokens: tuple[TokenSpec, ...] = ()
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class StateConfig:
    backend: str = "file"  # file | memory
    path: str = "var/state.json"
    audit_path: str = "var/audit.jsonl"
    experiment_path: str = "var/experiment.json"  # the experiment's checkpoint


@dataclass(frozen=True)
class AnalysisConfigSection:
    """`analysis:` — the health checker and rollout controller."""

    interval: float = 60.0
    lookback: float = 300.0
    bucket: float = 10.0
    horizon: float = 1800.0
    planned_checks: int = 120
    false_rollback_rate: float = 0.01
    failure_limit: int = 0
    max_error_ratio: float = 2.0
    max_p50_ratio: float = 1.2
    max_p95_ratio: float = 1.5
    max_timeout_ratio: float = 2.0
    min_requests: int = 200
    min_latency_samples: int = 100
    stale_after_hours: float = 48.0
    shadow_min_agreement: float = 0.85
    shadow_min_comparisons: int = 1000  # before the shadow report recommends anything
    shadow_max_p95_ratio: float = 1.5
    shadow_max_error_ratio: float = 2.0
    webhook_url: str = ""
    webhook_timeout: float = 2.0
    webhook_retries: int = 3


@dataclass(frozen=True)
class TelemetryConfig:
    """From the standard OpenTelemetry environment variables."""

    service_name: str = "rollout-sidecar"
    export: bool = False

    @staticmethod
    def from_environ(environ: Mapping[str, str]) -> TelemetryConfig:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
        return TelemetryConfig(
            service_name=environ.get("OTEL_SERVICE_NAME") or "rollout-sidecar",
            export=bool(endpoint) and exporter != "none",
        )


@dataclass(frozen=True)
class Config:
    predict_address: str
    control_address: str
    metrics_address: str
    model: str
    variants: Mapping[str, VariantSpec]
    flag: Flag
    shadow: ShadowConfig | None = None
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    state: StateConfig = field(default_factory=StateConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    analysis: AnalysisConfigSection = field(default_factory=AnalysisConfigSection)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    source: str = "<embedded>"


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _section(raw: Mapping[str, Any], name: str, problems: _Problems) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(name, f"must be a mapping, got {type(value).__name__}")
        return {}
    return value


def _unknown_keys(
    section: Mapping[str, Any], allowed: set[str], where: str, problems: _Problems
) -> None:
    for key in section:
        if key not in allowed:
            problems.add(f"{where}.{key}" if where else str(key), "unknown field")


def _address(value: Any, where: str, problems: _Problems) -> str:
    if not isinstance(value, str) or value.count(":") < 1:
        problems.add(where, f"must be host:port, got {value!r}")
        return ""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.add(where, f"must be host:port with a port in 0..65535, got {value!r}")
        return ""
    return value


def _number(
    section: Mapping[str, Any],
    key: str,
    default: float,
    where: str,
    problems: _Problems,
    *,
    minimum: float = 0.0,
    strict: bool = True,
) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(f"{where}.{key}", f"must be a number, got {value!r}")
        return default
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        problems.add(f"{where}.{key}", f"must be {relation} {minimum}, got {value!r}")
        return default
    return float(value)


def _integer(
    section: Mapping[str, Any],
    key: str,
    default: int,
    where: str,
    problems: _Problems,
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(f"{where}.{key}", f"must be an integer, got {value!r}")
        return default
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        problems.add(f"{where}.{key}", f"must be {bound}, got {value}")
        return default
    return value


def _variants(raw: Mapping[str, Any], problems: _Problems) -> dict[str, VariantSpec]:
    section = raw.get("variants")
    if not isinstance(section, Mapping) or not section:
        problems.add("variants", "at least one variant is required (name -> address, model_name)")
        return {}
    out: dict[str, VariantSpec] = {}
    for name, spec in section.items():
        where = f"variants.{name}"
        if not isinstance(spec, Mapping):
            problems.add(where, "must be a mapping with address and model_name")
            continue
        _unknown_keys(spec, {"address", "model_name", "model_version"}, where, problems)
        address = _address(spec.get("address"), f"{where}.address", problems)
        model_name = spec.get("model_name")
        if not isinstance(model_name, str) or not model_name:
            problems.add(f"{where}.model_name", "must be a non-empty string")
            model_name = ""
        version = spec.get("model_version", "")
        if version is None:
            version = ""
        if not isinstance(version, str | int):
            problems.add(f"{where}.model_version", f"must be a string, got {version!r}")
            version = ""
        out[str(name)] = VariantSpec(str(name), address, model_name, str(version))
    return out


def _flag(
    raw: Mapping[str, Any], variants: Mapping[str, VariantSpec], problems: _Problems
) -> Flag | None:
    section = _section(raw, "flag", problems)
    if not section:
        problems.add("flag", "is required (key, stable, weights)")
        return None
    allowed = {
        "key", "salt", "stable", "canary", "default", "weights", "kill_switch",
        "user_overrides", "segments", "segment_rules",
    }  # fmt: skip
    _unknown_keys(section, allowed, "flag", problems)
    rules: list[SegmentRule] = []
    raw_rules = section.get("segment_rules") or []
    if not isinstance(raw_rules, list):
        problems.add("flag.segment_rules", "must be a list of {segment, variant}")
        raw_rules = []
    for i, rule in enumerate(raw_rules):
        if not isinstance(rule, Mapping) or set(rule) != {"segment", "variant"}:
            problems.add(f"flag.segment_rules[{i}]", "must be a mapping with segment and variant")
            continue
        rules.append(SegmentRule(str(rule["segment"]), str(rule["variant"])))
    overrides = section.get("user_overrides") or {}
    if not isinstance(overrides, Mapping):
        problems.add("flag.user_overrides", "must map targeting keys to variant names")
        overrides = {}
    segments = section.get("segments") or []
    if not isinstance(segments, list):
        problems.add("flag.segments", "must be a list of segment names")
        segments = []
    weights = section.get("weights")
    if not variants:
        return None
    try:
        return Flag.build(
            key=section.get("key"),  # type: ignore[arg-type]
            salt=section.get("salt"),
            variants=list(variants),
            stable=section.get("stable"),  # type: ignore[arg-type]
            canary=section.get("canary"),
            default=section.get("default"),
            weights=weights if isinstance(weights, Mapping) else {},
            kill_switch=section.get("kill_switch", False),
            user_overrides={str(k): v for k, v in overrides.items()},
            segments=segments,
            segment_rules=rules,
        )
    except FlagError as exc:
        problems.add(f"flag.{exc.field}", exc.message)
        return None


def _shadow(
    raw: Mapping[str, Any], variants: Mapping[str, VariantSpec], problems: _Problems
) -> ShadowConfig | None:
    if raw.get("shadow") is None:
        return None
    section = _section(raw, "shadow", problems)
    where = "shadow"
    allowed = {
        "variant", "sample_bp", "max_in_flight", "deadline", "comparator", "rtol", "atol",
        "keep_examples", "breaker_failures", "breaker_cooldown", "noise_sample_bp",
    }  # fmt: skip
    _unknown_keys(section, allowed, where, problems)
    variant = section.get("variant")
    if variant not in variants:
        problems.add(f"{where}.variant", f"unknown variant {variant!r}; known: {sorted(variants)}")
    comparator = section.get("comparator", "auto")
    if not isinstance(comparator, str) or not comparator:
        problems.add(
            f"{where}.comparator", "must be auto, exact, tolerance, top1 or module:function"
        )
        comparator = "auto"
    else:
        from sidecar.core.shadow import load_comparator

        try:
            load_comparator(comparator, 1e-5, 1e-8)
        except ValueError as exc:
            problems.add(f"{where}.comparator", str(exc))
    return ShadowConfig(
        variant=str(variant),
        sample_bp=_integer(
            section, "sample_bp", BASIS_POINTS, where, problems, minimum=0, maximum=BASIS_POINTS
        ),
        max_in_flight=_integer(section, "max_in_flight", 64, where, problems, minimum=1),
        deadline=_number(section, "deadline", 1.0, where, problems),
        comparator=comparator,
        rtol=_number(section, "rtol", 1e-5, where, problems, strict=False),
        atol=_number(section, "atol", 1e-8, where, problems, strict=False),
        keep_examples=_integer(
            section, "keep_examples", 20, where, problems, minimum=0, maximum=10_000
        ),
        breaker_failures=_integer(section, "breaker_failures", 10, where, problems, minimum=0),
        breaker_cooldown=_number(section, "breaker_cooldown", 1.0, where, problems),
        noise_sample_bp=_integer(
            section, "noise_sample_bp", 0, where, problems, minimum=0, maximum=BASIS_POINTS
        ),
    )


def _resolve(path: str, base: Path | None) -> str:
    p = Path(path)
    return str(p if p.is_absolute() or base is None else base / p)


def _token(spec: Mapping[str, Any], where: str, base: Path | None, problems: _Problems) -> bytes:
    sources = [k for k in ("token_env", "token_file", "token_sha256") if k in spec]
    if len(sources) != 1:
        problems.add(where, "give exactly one of token_env, token_file, token_sha256")
        return b""
    kind = sources[0]
    value = spec[kind]
    if not isinstance(value, str) or not value:
        problems.add(f"{where}.{kind}", "must be a non-empty string")
        return b""
    if kind == "token_sha256":
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            problems.add(f"{where}.token_sha256", "must be 64 hexadecimal digits")
        return digest
    if kind == "token_env":
        token = os.environ.get(value, "")
        if not token:
            problems.add(f"{where}.token_env", f"environment variable {value} is not set")
            return b""
    else:
        try:
            token = Path(_resolve(value, base)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.add(f"{where}.token_file", f"cannot read {value}: {exc.strerror or exc}")
            return b""
    if len(token) < 16:
        problems.add(where, "the token must be at least 16 characters")
        return b""
    return hashlib.sha256(token.encode()).digest()


def _control(raw: Mapping[str, Any], base: Path | None, problems: _Problems) -> ControlConfig:
    section = _section(raw, "control", problems)
    _unknown_keys(section, {"auth", "tls"}, "control", problems)
    auth = section.get("auth") or {}
    if not isinstance(auth, Mapping):
        problems.add("control.auth", "must be a mapping with tokens")
        auth = {}
    _unknown_keys(auth, {"tokens"}, "control.auth", problems)
    raw_tokens = auth.get("tokens") or []
    if not isinstance(raw_tokens, list) or not raw_tokens:
        problems.add(
            "control.auth.tokens",
            "at least one token is required (Control requires credentials): "
            "[{name, role: operator|viewer, token_env|token_file|token_sha256}]",
        )
        raw_tokens = []
    tokens: list[TokenSpec] = []
    names: set[str] = set()
    for i, spec in enumerate(raw_tokens):
        where = f"control.auth.tokens[{i}]"
        if not isinstance(spec, Mapping):
            problems.add(where, "must be a mapping")
            continue
        _unknown_keys(
            spec, {"name", "role", "token_env", "token_file", "token_sha256"}, where, problems
        )
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            problems.add(
                f"{where}.name", "must be a non-empty string (the principal in the audit log)"
            )
            name = ""
        elif name in names:
            problems.add(f"{where}.name", f"duplicate principal {name!r}")
        names.add(str(name))
        role = spec.get("role")
        if role not in ROLES:
            problems.add(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
            role = "viewer"
        digest = _token(spec, where, base, problems)
        tokens.append(TokenSpec(str(name), str(role), digest))
    if len({t.sha256 for t in tokens}) != len(tokens):
        problems.add("control.auth.tokens", "two entries share one token")
    tls = None
    raw_tls = section.get("tls")
    if raw_tls is not None:
        if not isinstance(raw_tls, Mapping):
            problems.add("control.tls", "must be a mapping with cert_file, key_file")
        else:
            _unknown_keys(
                raw_tls, {"cert_file", "key_file", "client_ca_file"}, "control.tls", problems
            )
            files = {}
            for key in ("cert_file", "key_file", "client_ca_file"):
                value = raw_tls.get(key, "")
                if key != "client_ca_file" and not value:
                    problems.add(f"control.tls.{key}", "is required")
                elif value:
                    path = _resolve(str(value), base)
                    if not Path(path).is_file():
                        problems.add(f"control.tls.{key}", f"no such file: {value}")
                    files[key] = path
            tls = TlsConfig(
                files.get("cert_file", ""),
                files.get("key_file", ""),
                files.get("client_ca_file", ""),
            )
    return ControlConfig(tuple(tokens), tls)


def _state(raw: Mapping[str, Any], base: Path | None, problems: _Problems) -> StateConfig:
    section = _section(raw, "state", problems)
    _unknown_keys(section, {"backend", "path", "audit_path", "experiment_path"}, "state", problems)
    backend = section.get("backend", "file")
    if backend not in ("file", "memory"):
        problems.add("state.backend", f"must be file or memory, got {backend!r}")
        backend = "file"
    paths = {}
    for key, default in (
        ("path", "var/state.json"),
        ("audit_path", "var/audit.jsonl"),
        ("experiment_path", "var/experiment.json"),
    ):
        value = section.get(key, default)
        if not isinstance(value, str) or not value:
            problems.add(f"state.{key}", "must be a file path")
            value = default
        paths[key] = _resolve(value, base)
    return StateConfig(backend, paths["path"], paths["audit_path"], paths["experiment_path"])


def _bool(section: Mapping[str, Any], key: str, default: bool, where: str, p: _Problems) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        p.add(f"{where}.{key}", f"must be true or false, got {value!r}")
        return default
    return value


def _metric(spec: Any, where: str, problems: _Problems) -> MetricConfig | None:
    if not isinstance(spec, Mapping):
        problems.add(where, "must be a mapping with name, kind and minimum_effect")
        return None
    allowed = {"name", "kind", "minimum_effect", "higher_is_better", "baseline", "tau_squared"}
    _unknown_keys(spec, allowed, where, problems)
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.add(f"{where}.name", "must be a non-empty string (the metric apps report)")
        return None
    kind = spec.get("kind")
    if kind not in ("bool", "number"):
        problems.add(f"{where}.kind", f"must be bool or number, got {kind!r}")
        return None
    if "minimum_effect" not in spec:
        problems.add(f"{where}.minimum_effect", "is required (the difference that matters)")
        return None
    mde = _number(spec, "minimum_effect", 0.01, where, problems)
    baseline = None
    if spec.get("baseline") is not None:
        if kind != "bool":
            problems.add(f"{where}.baseline", "only boolean metrics have a baseline rate")
        else:
            baseline = _number(spec, "baseline", 0.1, where, problems)
            if not 0 < baseline < 1:
                problems.add(f"{where}.baseline", f"must be within (0, 1), got {baseline}")
                baseline = None
            elif not 0 < baseline + mde < 1:
                problems.add(f"{where}.minimum_effect", "baseline + minimum_effect must be < 1")
                baseline = None
    tau = None
    if spec.get("tau_squared") is not None:
        tau = _number(spec, "tau_squared", 1.0, where, problems)
    return MetricConfig(
        name=name,
        kind=kind,
        minimum_effect=mde,
        higher_is_better=_bool(spec, "higher_is_better", True, where, problems),
        baseline=baseline,
        tau_squared=tau,
    )


def _experiment(raw: Mapping[str, Any], problems: _Problems) -> ExperimentConfig:
    section = _section(raw, "experiment", problems)
    where = "experiment"
    allowed = {
        "metrics", "segments", "correction", "alpha", "power", "srm_threshold",
        "look_interval", "gate_metric", "max_requests", "ttl_seconds",
    }  # fmt: skip
    _unknown_keys(section, allowed, where, problems)
    raw_metrics = section.get("metrics") or []
    if not isinstance(raw_metrics, list):
        problems.add(f"{where}.metrics", "must be a list of {name, kind, minimum_effect}")
        raw_metrics = []
    metrics: list[MetricConfig] = []
    for i, spec in enumerate(raw_metrics):
        metric = _metric(spec, f"{where}.metrics[{i}]", problems)
        if metric is None:
            continue
        if any(m.name == metric.name for m in metrics):
            problems.add(f"{where}.metrics[{i}].name", f"duplicate metric {metric.name!r}")
            continue
        metrics.append(metric)
    segments = section.get("segments") or []
    if not isinstance(segments, list) or not all(isinstance(x, str) and x for x in segments):
        problems.add(f"{where}.segments", "must be a list of segment names (the family)")
        segments = []
    elif len(set(segments)) != len(segments):
        problems.add(f"{where}.segments", "must not repeat a segment")
    correction = section.get("correction", "holm")
    if correction not in ("holm", "bh"):
        problems.add(f"{where}.correction", f"must be holm or bh, got {correction!r}")
        correction = "holm"
    gate_metric = section.get("gate_metric", "")
    if not isinstance(gate_metric, str):
        problems.add(f"{where}.gate_metric", "must be a metric name")
        gate_metric = ""
    elif gate_metric and all(m.name != gate_metric for m in metrics):
        problems.add(f"{where}.gate_metric", f"{gate_metric!r} is not one of experiment.metrics")
    levels = {}
    for key, default in (("alpha", 0.05), ("power", 0.8), ("srm_threshold", 0.001)):
        value = _number(section, key, default, where, problems)
        if not 0 < value < 1:
            problems.add(f"{where}.{key}", f"must be within (0, 1), got {value}")
            value = default
        levels[key] = value
    return ExperimentConfig(
        metrics=tuple(metrics),
        segments=tuple(segments),
        correction=correction,
        alpha=levels["alpha"],
        power=levels["power"],
        srm_threshold=levels["srm_threshold"],
        look_interval=_number(section, "look_interval", 10.0, where, problems),
        gate_metric=gate_metric,
        max_requests=_integer(section, "max_requests", 200_000, where, problems, minimum=1),
        ttl_seconds=_number(section, "ttl_seconds", 3600.0, where, problems),
    )


def _drift(raw: Mapping[str, Any], base: Path | None, problems: _Problems) -> DriftConfig:
    section = _section(raw, "drift", problems)
    where = "drift"
    allowed = {
        "enabled", "sample_every", "reference_size", "window_size", "bins", "moderate",
        "major", "reference_file",
    }  # fmt: skip
    _unknown_keys(section, allowed, where, problems)
    moderate = _number(section, "moderate", 0.1, where, problems)
    major = _number(section, "major", 0.25, where, problems)
    if major <= moderate:
        problems.add(f"{where}.major", "must exceed drift.moderate")
    reference_file = section.get("reference_file", "") or ""
    if not isinstance(reference_file, str):
        problems.add(f"{where}.reference_file", "must be a file path")
        reference_file = ""
    elif reference_file:
        reference_file = _resolve(reference_file, base)
        if not Path(reference_file).is_file():
            problems.add(f"{where}.reference_file", f"no such file: {reference_file}")
    return DriftConfig(
        enabled=_bool(section, "enabled", True, where, problems),
        sample_every=_integer(section, "sample_every", 10, where, problems, minimum=1),
        reference_size=_integer(section, "reference_size", 5000, where, problems, minimum=50),
        window_size=_integer(section, "window_size", 5000, where, problems, minimum=50),
        bins=_integer(section, "bins", 10, where, problems, minimum=2, maximum=100),
        moderate=moderate,
        major=major,
        reference_file=reference_file,
    )


def _analysis(raw: Mapping[str, Any], problems: _Problems) -> AnalysisConfigSection:
    section = _section(raw, "analysis", problems)
    defaults = AnalysisConfigSection()
    names = {f for f in AnalysisConfigSection.__dataclass_fields__}
    _unknown_keys(section, names, "analysis", problems)
    values: dict[str, Any] = {}
    for name in names:
        default = getattr(defaults, name)
        where = "analysis"
        if isinstance(default, str):
            value = section.get(name, default)
            if not isinstance(value, str):
                problems.add(f"analysis.{name}", "must be a string")
                value = default
            elif name == "webhook_url" and value and not value.startswith(("http://", "https://")):
                problems.add("analysis.webhook_url", "must be an http:// or https:// URL")
            values[name] = value
        elif isinstance(default, int):
            minimum = 0 if name in ("failure_limit", "webhook_retries") else 1
            values[name] = _integer(section, name, default, where, problems, minimum=minimum)
        else:
            values[name] = _number(section, name, default, where, problems)
    ratios = ("max_error_ratio", "max_p50_ratio", "max_p95_ratio", "max_timeout_ratio")
    for name in (*ratios, "shadow_max_p95_ratio", "shadow_max_error_ratio"):
        if values[name] <= 1.0:
            problems.add(f"analysis.{name}", f"must be > 1, got {values[name]}")
            values[name] = getattr(defaults, name)
    for name in ("false_rollback_rate", "shadow_min_agreement"):
        if not 0 < values[name] < 1:
            problems.add(f"analysis.{name}", f"must be within (0, 1), got {values[name]}")
            values[name] = getattr(defaults, name)
    if values["horizon"] < values["lookback"] + values["bucket"]:
        problems.add("analysis.horizon", "must exceed lookback by at least one bucket")
    return AnalysisConfigSection(**values)


def parse_config(raw: Any, source: str = "<embedded>", base: Path | None = None) -> Config:
    """Validate a parsed YAML document; raise `ConfigError` listing every problem."""
    problems = _Problems()
    if not isinstance(raw, Mapping):
        raise ConfigError(source, ["<top level>: must be a mapping"])
    allowed = {
        "listen", "model", "variants", "flag", "shadow", "upstream", "server", "control", "state",
        "analysis", "experiment", "drift",
    }  # fmt: skip
    _unknown_keys(raw, allowed, "", problems)

    listen = _section(raw, "listen", problems)
    _unknown_keys(listen, {"predict", "control", "metrics"}, "listen", problems)
    predict_address = _address(listen.get("predict", "127.0.0.1:8500"), "listen.predict", problems)
    control_address = _address(listen.get("control", "127.0.0.1:8501"), "listen.control", problems)
    metrics_address = listen.get("metrics") or ""
    if metrics_address:
        metrics_address = _address(metrics_address, "listen.metrics", problems)
    if (
        predict_address
        and predict_address == control_address
        and not predict_address.endswith(":0")
    ):
        problems.add("listen.control", "must differ from listen.predict")

    model = raw.get("model")
    if not isinstance(model, str) or not model:
        problems.add("model", "must be the model name apps call (a non-empty string)")
        model = ""

    variants = _variants(raw, problems)
    flag = _flag(raw, variants, problems)
    shadow = _shadow(raw, variants, problems)

    up = _section(raw, "upstream", problems)
    _unknown_keys(up, {"default_deadline", "max_deadline", "connect_timeout"}, "upstream", problems)
    upstream = UpstreamConfig(
        default_deadline=_number(up, "default_deadline", 5.0, "upstream", problems),
        max_deadline=_number(up, "max_deadline", 30.0, "upstream", problems),
        connect_timeout=_number(up, "connect_timeout", 5.0, "upstream", problems, strict=False),
    )
    if upstream.default_deadline > upstream.max_deadline:
        problems.add("upstream.default_deadline", "must not exceed upstream.max_deadline")

    srv = _section(raw, "server", problems)
    _unknown_keys(
        srv,
        {"max_message_bytes", "shutdown_grace", "log_level", "log_requests"},
        "server",
        problems,
    )
    log_level = srv.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        problems.add(
            "server.log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
        )
        log_level = "info"
    log_requests = srv.get("log_requests", False)
    if not isinstance(log_requests, bool):
        problems.add("server.log_requests", f"must be true or false, got {log_requests!r}")
        log_requests = False
    server = ServerConfig(
        max_message_bytes=_integer(
            srv, "max_message_bytes", 4 * 1024 * 1024, "server", problems, minimum=1024
        ),
        shutdown_grace=_number(srv, "shutdown_grace", 10.0, "server", problems, strict=False),
        log_level=log_level,
        log_requests=log_requests,
    )
    control = _control(raw, base, problems)
    state = _state(raw, base, problems)
    analysis = _analysis(raw, problems)
    experiment = _experiment(raw, problems)
    drift = _drift(raw, base, problems)
    if problems.items or flag is None:
        raise ConfigError(source, problems.items or ["flag: is required"])
    return Config(
        predict_address=predict_address,
        control_address=control_address,
        metrics_address=metrics_address,
        model=model,
        variants=variants,
        flag=flag,
        shadow=shadow,
        upstream=upstream,
        server=server,
        control=control,
        state=state,
        telemetry=TelemetryConfig.from_environ(os.environ),
        analysis=analysis,
        experiment=experiment,
        drift=drift,
        source=source,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML configuration file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"<file>: cannot read: {exc.strerror or exc}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"<file>: not valid YAML: {exc}"]) from exc
    return parse_config(raw, source, Path(path).resolve().parent)


def env_log_format() -> str:
    """Log renderer: SIDECAR_LOG_FORMAT=json (default) or console."""
    value = os.environ.get("SIDECAR_LOG_FORMAT", "json")
    return value if value in ("json", "console") else "json"
