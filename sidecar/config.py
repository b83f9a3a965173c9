"""Configuration: the one module that reads the YAML file and the environment.

Every section is declared once, as a pydantic model here or as the core's own settings
dataclass (`ExperimentSettings`, `MetricSpec`, `DriftSettings`: pydantic validates them
through their annotations; their `__post_init__` holds the cross-field rules, so they stay
pure). Models forbid unknown keys, are frozen, and are strict: ``"64"`` is not an integer,
``true`` is not a number, NaN and infinity are refused. Durations accept ``30s``, ``15m``,
``2h`` or seconds (`sidecar.core.duration.Duration`).

`load_config(path)` parses and validates everything at start-up and raises `ConfigError`
listing every problem, each naming its field (``flag.weights: must sum to 10000 ...``);
`_problems` turns pydantic's error locations into these paths. A key repeated in one YAML
mapping is refused (`UniqueKeyLoader`). Everything `serve` would fail on before listening
is checked here too: message sizes, TLS files that do not parse (`ssl`), state paths that
are folders or in folders that cannot be written, drift reference files that are not
JSON (`read_drift_reference`); only binding the listen addresses is left to `serve`.
`sidecar check-config FILE` runs exactly this without serving; `sidecar config-schema`
prints `config_schema()`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import core_schema

from sidecar.core.canary import analysis as canary
from sidecar.core.canary.fastpath import FastRollbackSettings
from sidecar.core.canary.judge import JudgeConfig
from sidecar.core.canary.sequential import SequentialConfig
from sidecar.core.duration import Duration
from sidecar.core.experiment.analysis import ExperimentSettings
from sidecar.core.experiment.drift import DriftSettings, DriftTracker
from sidecar.core.routing import BASIS_POINTS, Flag, FlagError, SegmentRule
from sidecar.core.shadow.report import ShadowThresholds

LogLevel = Literal["debug", "info", "warning", "error"]
Role = Literal["viewer", "operator"]  # viewer: read; operator: everything
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
ROLES: tuple[str, ...] = get_args(Role)


class ConfigError(ValueError):
    """The configuration is invalid; `problems` lists each one, naming its field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:  # one line naming the file and the field
            super().__init__(f"invalid configuration {source}: {problems[0]}")
            return
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration {source}:\n{lines}")


# --------------------------------------------------------------------------- field types


@dataclass(frozen=True)
class _Between:
    """Annotated metadata: a number within [low, high] (or (low, high) when `open`), with
    one message naming both bounds."""

    low: float
    high: float
    open: bool = False

    def __get_pydantic_core_schema__(
        self, source: Any, handler: Callable[[Any], core_schema.CoreSchema]
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        out = handler(schema)
        if self.open:
            out.update(exclusiveMinimum=self.low, exclusiveMaximum=self.high)
        else:
            out.update(minimum=self.low, maximum=self.high)
        return out

    def _check(self, value: float) -> float:
        if self.open and not self.low < value < self.high:
            raise ValueError(f"must be within ({self.low:g}, {self.high:g}), got {value!r}")
        if not self.open and not self.low <= value <= self.high:
            raise ValueError(f"must be {self.low:g}..{self.high:g}, got {value!r}")
        return value


def _non_empty(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"must be {what}")
        return value

    return AfterValidator(check)


def _address(value: str) -> str:
    host, colon, port = value.rpartition(":")
    if not colon:
        raise ValueError(f"must be host:port, got {value!r}")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port with a port in 0..65535, got {value!r}")
    return value


def _resolve(value: str, info: ValidationInfo) -> str:
    """A path relative to the configuration file's folder (context ``base``)."""
    if not value:
        raise ValueError("must be a file path")
    base = (info.context or {}).get("base")
    path = Path(value)
    return str(path if path.is_absolute() or base is None else Path(base) / path)


def _existing_file(value: str, info: ValidationInfo) -> str:
    if not value:
        return value
    path = _resolve(value, info)
    if not Path(path).is_file():
        raise ValueError(f"no such file: {value}")
    return path


def _version_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Address = Annotated[str, AfterValidator(_address)]
BasisPoints = Annotated[int, _Between(0, BASIS_POINTS)]
Fraction = Annotated[float, _Between(0, 1, open=True)]
Ratio = Annotated[float, Field(gt=1)]  # canary / stable guards
PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
PositiveDuration = Annotated[Duration, Field(gt=0)]
NonNegativeDuration = Annotated[Duration, Field(ge=0)]
FilePath = Annotated[str, AfterValidator(_resolve)]  # resolved against the file's folder
ExistingFile = Annotated[str, AfterValidator(_existing_file)]  # resolved; must exist
# Weights are checked by `Flag.build` (which names `flag.weights[variant]`).
Weight = Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": BASIS_POINTS})]


class _Section(BaseModel):
    """A configuration section: unknown keys refused, frozen, strict, finite."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        protected_namespaces=(),
    )


# --------------------------------------------------------------------------- sections


class ListenConfig(_Section):
    """`listen:` — where the sidecar listens."""

    predict: Address = "127.0.0.1:8500"
    control: Address = "127.0.0.1:8501"
    metrics: Annotated[str, AfterValidator(lambda v: _address(v) if v else v)] = ""  # "": off

    @model_validator(mode="after")
    def _ports_differ(self) -> ListenConfig:
        if self.predict == self.control and not self.predict.endswith(":0"):
            raise ValueError("control: must differ from listen.predict")
        return self


class VariantSpec(_Section):
    """A model variant: which upstream model server, model name and version answer it
    (`variants.<name>`; the name is the key)."""

    name: SkipJsonSchema[str] = ""
    address: Address
    model_name: Annotated[str, _non_empty("a non-empty string")]
    model_version: Annotated[
        str,
        BeforeValidator(_version_text),
        WithJsonSchema({"type": ["string", "integer"]}),
    ] = ""  # "": the server chooses


class FlagConfig(_Section):
    """`flag:` — the routing flag at first start (the stored state wins afterwards).
    `build` validates it through `Flag.build`."""

    key: str
    stable: str
    weights: dict[str, Weight]
    salt: str | None = None  # None: the key
    canary: str | None = None
    default: str | None = None
    kill_switch: bool = False
    user_overrides: dict[str, str] = Field(default_factory=dict)
    segments: tuple[str, ...] = ()
    segment_rules: tuple[SegmentRule, ...] = ()

    def build(self, variants: Iterable[str]) -> Flag:
        """The flag over `variants`; raises `FlagError` naming the field."""
        return Flag.build(
            key=self.key,
            salt=self.salt,
            variants=list(variants),
            stable=self.stable,
            canary=self.canary,
            default=self.default,
            weights=self.weights,
            kill_switch=self.kill_switch,
            user_overrides=self.user_overrides,
            segments=self.segments,
            segment_rules=self.segment_rules,
        )


def _comparator(value: str) -> str:
    if not value:
        raise ValueError("must be auto, exact, tolerance, top1 or module:function")
    from sidecar.core.shadow import load_comparator  # imports a custom comparator's module

    load_comparator(value, 1e-5, 1e-8)
    return value


class ShadowConfig(_Section):
    """`shadow:` — mirror a sample of requests to the shadow variant and compare."""

    variant: str
    sample_bp: BasisPoints = BASIS_POINTS
    max_in_flight: PositiveInt = 64
    deadline: PositiveDuration = 1.0
    comparator: Annotated[str, AfterValidator(_comparator)] = "auto"
    rtol: Annotated[float, Field(ge=0)] = 1e-5
    atol: Annotated[float, Field(ge=0)] = 1e-8
    keep_examples: Annotated[int, _Between(0, 10_000)] = 20
    breaker_failures: Count = 10
    breaker_cooldown: PositiveDuration = 1.0
    # Also mirror this share of requests to the stable model itself (a noise mirror): the
    # model's own disagreement is subtracted from the candidate's (Diffy). 0: off.
    noise_sample_bp: BasisPoints = 0


class UpstreamConfig(_Section):
    """`upstream:` — deadlines of the calls to the model servers."""

    default_deadline: PositiveDuration = 5.0
    max_deadline: PositiveDuration = 30.0
    connect_timeout: NonNegativeDuration = 5.0

    @model_validator(mode="after")
    def _default_within_max(self) -> UpstreamConfig:
        if self.default_deadline > self.max_deadline:
            raise ValueError("default_deadline: must not exceed upstream.max_deadline")
        return self

    def timeout_for(self, time_remaining: float | None) -> float:
        """The caller's remaining deadline capped by `max_deadline` (`default_deadline`
        when the caller set none)."""
        if time_remaining is None:
            return self.default_deadline
        return max(0.0, min(time_remaining, self.max_deadline))


class PassThroughConfig(_Section):
    """`passthrough:` — the default upstream for models this sidecar does not route: their
    ModelInfer, ModelReady, ModelMetadata and repository calls go there unchanged (no
    flag, not counted). Absent: such models get NOT_FOUND. A deadline left out is the
    `upstream:` one."""

    address: Address
    default_deadline: PositiveDuration | None = None  # None: upstream.default_deadline
    max_deadline: PositiveDuration | None = None  # None: upstream.max_deadline
    # Calls in flight at once; one more is refused with RESOURCE_EXHAUSTED (so models
    # nobody routes cannot take every slot of the sidecar).
    max_in_flight: PositiveInt = 256

    def limits(self, upstream: UpstreamConfig) -> UpstreamConfig:
        """The deadlines of pass-through calls: these, else the `upstream:` ones."""
        return upstream.model_copy(
            update={
                "default_deadline": self.default_deadline or upstream.default_deadline,
                "max_deadline": self.max_deadline or upstream.max_deadline,
            }
        )


MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # gRPC's own limit is 2 GiB; larger ones fail at bind


class ServerConfig(_Section):
    """`server:` — limits and process behaviour."""

    max_message_bytes: Annotated[int, Field(ge=1024, le=MAX_MESSAGE_BYTES)] = 4 * 1024 * 1024
    shutdown_grace: NonNegativeDuration = 10.0
    log_level: LogLevel = "info"
    log_requests: bool = False


def _token_digest(sources: Mapping[str, str | None], base: object) -> bytes:
    """SHA-256 of the token from exactly one of token_env, token_file, token_sha256."""
    given = {k: v for k, v in sources.items() if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one of token_env, token_file, token_sha256")
    ((kind, value),) = given.items()
    if not value:
        raise ValueError(f"{kind}: must be a non-empty string")
    if kind == "token_sha256":
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("token_sha256: must be 64 hexadecimal digits")
        return bytes.fromhex(value)
    if kind == "token_env":
        token = os.environ.get(value, "")
        if not token:
            raise ValueError(f"token_env: environment variable {value} is not set")
    else:
        path = Path(value) if base is None else Path(str(base)) / value
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"token_file: cannot read {value}: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise ValueError("the token must be at least 16 characters")
    return hashlib.sha256(token.encode()).digest()


class TokenSpec(_Section):
    """A Control credential: who (`name`), what they may do (`role`), and where the bearer
    token comes from; only its SHA-256 (`sha256`) is kept, never the token."""

    name: Annotated[str, _non_empty("a non-empty string (the principal in the audit log)")]
    role: Role
    token_env: str | None = None
    token_file: str | None = None
    token_sha256: str | None = Field(default=None, repr=False)
    _sha256: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _digest(self, info: ValidationInfo) -> TokenSpec:
        sources = {
            "token_env": self.token_env,
            "token_file": self.token_file,
            "token_sha256": self.token_sha256,
        }
        self._sha256 = _token_digest(sources, (info.context or {}).get("base"))
        return self

    @property
    def sha256(self) -> bytes:
        return self._sha256


class AuthConfig(_Section):
    tokens: tuple[TokenSpec, ...] = ()

    @model_validator(mode="after")
    def _tokens(self) -> AuthConfig:
        if not self.tokens:
            raise ValueError(
                "tokens: at least one token is required (Control requires credentials): "
                "[{name, role: operator|viewer, token_env|token_file|token_sha256}]"
            )
        _distinct_tokens(self.tokens)
        return self


def _distinct_tokens(tokens: tuple[TokenSpec, ...]) -> None:
    """Each principal named once, each token used once (the audit must say who)."""
    problems = []
    names: set[str] = set()
    for i, token in enumerate(tokens):
        if token.name in names:
            problems.append(f"tokens[{i}].name: duplicate principal {token.name!r}")
        names.add(token.name)
    if len({t.sha256 for t in tokens}) != len(tokens):
        problems.append("tokens: two entries share one token")
    if problems:
        raise ValueError("\n".join(problems))


class AppTokenSpec(TokenSpec):
    """A credential of an app on the predict port (`predict.auth.tokens[]`): role `app`,
    which may call `Predict.ReportOutcome` and nothing on Control."""

    role: Literal["app"] = "app"  # type: ignore[assignment]


class PredictAuthConfig(_Section):
    """`predict.auth:` — app credentials for `ReportOutcome` (none: it stays open).
    Inference calls (Predict, ModelInfer) never need one."""

    tokens: tuple[AppTokenSpec, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> PredictAuthConfig:
        _distinct_tokens(self.tokens)
        return self


class PredictConfig(_Section):
    """`predict:` — what the app port accepts and what it tells.

    `max_key_bytes` bounds the targeting key, segment, request id and metric name of every
    call (longer: INVALID_ARGUMENT, nothing counted). `max_per_key` is how much one
    targeting key weighs in an experiment epoch: at most that many of its split-routed
    requests enter the experiment (later ones are served, not counted), and at most that
    many of its outcomes are counted per metric (more are answered OK with
    `counted: false`); 0: no cap. The tallies live in a table of at most
    `max_tracked_keys` entries (the least recently used is forgotten).
    `expose_reason_detail` adds the bucket and split to Predict answers (for debugging:
    it tells a client where it stands in the split)."""

    auth: PredictAuthConfig = PredictAuthConfig()
    expose_reason_detail: bool = False
    max_key_bytes: Annotated[int, _Between(16, 65_536)] = 256
    max_per_key: Count = 20
    max_tracked_keys: PositiveInt = 100_000


class TlsConfig(_Section):
    cert_file: ExistingFile
    key_file: ExistingFile
    client_ca_file: ExistingFile = ""  # set: clients must present a certificate signed by it

    @model_validator(mode="after")
    def _files_parse(self) -> TlsConfig:
        """What `serve` hands to gRPC must parse: the certificate chain with its key, and
        the client CA bundle (the ssl module reads the same PEM files gRPC does)."""
        problems = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(
                f"cert_file: {self.cert_file} with key_file {self.key_file} is not a PEM "
                f"certificate chain and its private key: {_ssl_reason(exc)}"
            )
        if self.client_ca_file:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(
                    f"client_ca_file: {self.client_ca_file} is not a PEM CA certificate: "
                    f"{_ssl_reason(exc)}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(getattr(exc, "strerror", None) or exc)


class ControlConfig(_Section):
    """`control:` — credentials (required) and optional TLS of the operator API."""

    auth: AuthConfig = Field(default_factory=dict, validate_default=True)
    tls: TlsConfig | None = None


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://")):
        raise ValueError("must be a redis:// or rediss:// (TLS) URL, e.g. redis://redis:6379/0")
    if "@" in value:
        raise ValueError("must not carry a password: use password_env or password_file")
    return value


_FLEET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_ADVERTISE = 255
_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def _advertise(value: str) -> str:
    """`state.redis.advertise_control`: empty (derived) or a bounded host:port."""
    if not value:
        return value
    if len(value) > MAX_ADVERTISE:
        raise ValueError(f"must be at most {MAX_ADVERTISE} characters")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("must be host:port in printable ASCII without spaces")
    return _address(value)


class RedisConfig(_Section):
    """`state.redis:` — the fleet's shared store, with `state.backend: redis`. Every key
    starts with `fleet` (the fleet's name: the sidecars of one model's replicas share it)."""

    url: Annotated[str, AfterValidator(_redis_url)] = "redis://127.0.0.1:6379/0"
    fleet: Annotated[str, Field(pattern=_FLEET_NAME)] = "default"
    password_env: str | None = None  # name of an environment variable holding the password
    password_file: FilePath | None = None  # a file holding the password (one line)
    tls_ca_file: ExistingFile = ""  # with rediss://: the CA that signed Redis's certificate
    member_id: str = ""  # empty: $SIDECAR_MEMBER_ID, else $POD_NAME / $HOSTNAME, plus the pid
    connect_timeout: PositiveDuration = 2.0
    heartbeat_interval: PositiveDuration = 1.0  # membership heartbeat period
    member_ttl: PositiveDuration = 5.0  # a member not seen for this long is not live
    resync_interval: PositiveDuration = 5.0  # re-read the state even without a notice
    lease_ttl: PositiveDuration = 5.0  # the rollout leader's lease
    stats_interval: PositiveDuration = 2.0  # publish mergeable statistics this often
    # The Control address other members and operators dial (host:port; port 0: the bound
    # port). Empty: listen.control when its host is not a wildcard, else $POD_IP (else the
    # host name) with the bound port. $SIDECAR_ADVERTISE_CONTROL sets it.
    advertise_control: Annotated[str, AfterValidator(_advertise)] = ""

    @model_validator(mode="after")
    def _one_password_source(self) -> RedisConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give at most one of password_env, password_file")
        return self

    def member(self) -> tuple[str, str]:
        """(member id, host): `member_id`, else $SIDECAR_MEMBER_ID, else the pod or host
        name ($POD_NAME, $HOSTNAME, the system's) plus `:pid`; host is the pod/host name."""
        host = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()
        explicit = self.member_id or os.environ.get("SIDECAR_MEMBER_ID", "")
        return explicit or f"{host}:{os.getpid()}", host

    def advertised_control(self, listen: str, port: int) -> str:
        """The Control address this member advertises in its heartbeat: `advertise_control`
        (a port 0 there means the bound `port`), else `listen` (listen.control) when its
        host is a specific address, else $POD_IP, else the pod or host name, with `port`."""
        if self.advertise_control:
            host, _, given = self.advertise_control.rpartition(":")
            return f"{host}:{port if int(given) == 0 else given}"
        host = listen.rpartition(":")[0]
        if host in _WILDCARD_HOSTS:
            host = os.environ.get("POD_IP") or self.member()[1]
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{host}:{port}"

    def password(self) -> str | None:
        """The password from the environment or the file (None when neither is set);
        ValueError naming the setting when it cannot be read."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(
                    f"state.redis.password_env: environment variable {self.password_env} is not set"
                )
            return value
        if self.password_file is not None:
            try:
                return Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"state.redis.password_file: cannot read {self.password_file}: "
                    f"{exc.strerror or exc}"
                ) from None
        return None


class StateConfig(_Section):
    """`state:` — where the desired state with its audit log (one SQLite database: a
    change and its audit entry are committed together) and the experiment checkpoint live
    (relative paths: the configuration file's folder). `backend: redis` shares one state,
    one audit log and one set of statistics across a fleet (`redis:`)."""

    backend: Literal["sqlite", "memory", "redis"] = "sqlite"
    path: FilePath = Field("var/sidecar.db", validate_default=True)
    experiment_path: FilePath = Field("var/experiment.json", validate_default=True)
    redis: RedisConfig = RedisConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_file_backend(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and (data.get("backend") == "file" or "audit_path" in data):
            raise ValueError(
                "the file backend (state.json + audit_path) was replaced by one SQLite "
                "database holding the state and its audit log: set `backend: sqlite` and "
                "`path: var/sidecar.db`, and remove `audit_path` (a state.json in that "
                "folder is migrated on the first start)"
            )
        return data


def _webhook(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


class AnalysisConfig(_Section):
    """`analysis:` — the health checker and rollout controller."""

    interval: PositiveDuration = 60.0
    lookback: PositiveDuration = 300.0
    bucket: PositiveDuration = 10.0
    horizon: PositiveDuration = 1800.0
    planned_checks: PositiveInt = 120
    false_rollback_rate: Fraction = 0.01
    failure_limit: Count = 0
    max_error_ratio: Ratio = 2.0
    max_p50_ratio: Ratio = 1.2
    max_p95_ratio: Ratio = 1.5
    max_timeout_ratio: Ratio = 2.0
    min_requests: PositiveInt = 200
    min_latency_samples: PositiveInt = 100
    stale_after_hours: Annotated[float, Field(gt=0)] = 48.0
    shadow_min_agreement: Fraction = 0.85
    shadow_min_comparisons: PositiveInt = 1000  # before the shadow report recommends anything
    shadow_max_p95_ratio: Ratio = 1.5
    shadow_max_error_ratio: Ratio = 2.0
    webhook_url: Annotated[str, AfterValidator(_webhook)] = ""
    webhook_timeout: PositiveDuration = 2.0
    webhook_retries: Count = 3
    # A rollout stage still waiting on a gate this long after it started is reported
    # stalled (status warning, log, alert, metric); a plan stage may set its own. 0: off.
    progress_deadline: NonNegativeDuration = 3600.0
    progress_deadline_abort: bool = False  # true: also roll back a stalled stage
    # Roll a hard-failing canary back at once, between the judge's checks (core.canary.fastpath).
    fast_rollback: FastRollbackSettings = FastRollbackSettings()

    @model_validator(mode="after")
    def _horizon_holds_lookback(self) -> AnalysisConfig:
        if self.horizon < self.lookback + self.bucket:
            raise ValueError("horizon: must exceed lookback by at least one bucket")
        return self

    def judge(self) -> canary.CanaryAnalysisConfig:
        """The judge's thresholds and the alpha spending of repeated checks."""
        return canary.CanaryAnalysisConfig(
            planned_checks=self.planned_checks,
            false_rollback_rate=self.false_rollback_rate,
            failure_limit=self.failure_limit,
            judge=JudgeConfig(
                max_error_ratio=self.max_error_ratio,
                max_timeout_ratio=self.max_timeout_ratio,
                max_p50_ratio=self.max_p50_ratio,
                max_p95_ratio=self.max_p95_ratio,
                min_requests=self.min_requests,
                min_latency_samples=self.min_latency_samples,
            ),
        )

    def deployment(self) -> SequentialConfig:
        """The deployment's false-rollback budget (one per canary, all stages) and the
        judge's guards: what the rollout controller and the no-plan health check use."""
        return SequentialConfig(
            false_rollback_rate=self.false_rollback_rate, judge=self.judge().judge
        )

    def shadow_thresholds(self) -> ShadowThresholds:
        """When the shadow report recommends what (also the shadow stage's gates)."""
        return ShadowThresholds(
            min_comparisons=self.shadow_min_comparisons,
            min_agreement=self.shadow_min_agreement,
            max_p95_ratio=self.shadow_max_p95_ratio,
            max_error_ratio=self.shadow_max_error_ratio,
        )


OTLP_PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True)
class TelemetryConfig:
    """From the standard OpenTelemetry environment variables. `protocol`: OTLP over gRPC
    (default) or HTTP (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
    `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`)."""

    service_name: str = "rollout-sidecar"
    export: bool = False
    protocol: str = "grpc"

    @staticmethod
    def from_environ(environ: Mapping[str, str]) -> TelemetryConfig:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
        variable = (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
            if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            else "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        protocol = environ.get(variable, "").strip().lower() or "grpc"
        if protocol not in OTLP_PROTOCOLS:
            raise ValueError(
                f"${variable}: must be grpc or http/protobuf (OTLP over gRPC or HTTP), "
                f"got {protocol!r}"
            )
        return TelemetryConfig(
            service_name=environ.get("OTEL_SERVICE_NAME") or "rollout-sidecar",
            export=bool(endpoint) and exporter != "none",
            protocol=protocol,
        )


# --------------------------------------------------------------------------- the file


MAX_ROUTED_MODELS = 32  # routed models per sidecar, the primary included
_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # also a file name part and a Redis key part


class ModelSection(_Section):
    """One routed model's own sections: its `variants`, `flag`, `shadow` (optional),
    `experiment` and `drift` (optional). The file's top level is the primary routed model
    (`model:` and these sections); `models.<name>` holds each further one. `flag` is the
    validated routing `Flag`; the YAML section it comes from is `flag_config`."""

    variants: dict[str, VariantSpec] = Field(default_factory=dict, validate_default=True)
    flag_config: FlagConfig = Field(alias="flag")
    shadow: ShadowConfig | None = None  # None: no shadow mirroring
    experiment: ExperimentSettings = ExperimentSettings()
    drift: DriftSettings = DriftSettings()

    _flag: Flag = PrivateAttr()

    @field_validator("variants")
    @classmethod
    def _some_variants(cls, variants: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        if not variants:
            raise ValueError("at least one variant is required (name -> address, model_name)")
        return variants

    @field_validator("drift")
    @classmethod
    def _drift_reference(cls, drift: DriftSettings, info: ValidationInfo) -> DriftSettings:
        if not drift.reference_file:
            return drift
        try:
            drift = replace(drift, reference_file=_existing_file(drift.reference_file, info))
            read_drift_reference(drift)  # what `serve` reads: it must parse and fit
        except ValueError as exc:
            raise ValueError(f"reference_file: {exc}") from None
        return drift

    @model_validator(mode="after")
    def _model_cross_sections(self) -> ModelSection:
        problems = []
        if self.shadow is not None and self.shadow.variant not in self.variants:
            problems.append(
                f"shadow.variant: unknown variant {self.shadow.variant!r}; "
                f"known: {sorted(self.variants)}"
            )
        try:
            self._flag = self.flag_config.build(self.variants)
        except FlagError as exc:
            problems.append(f"flag.{exc.field}: {exc.message}")
        problems += _routed_experiment_segments(self.flag_config, self.experiment)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def flag(self) -> Flag:
        return self._flag


def _routed_names(models: dict[str, ModelSection]) -> dict[str, ModelSection]:
    if len(models) > MAX_ROUTED_MODELS - 1:
        raise ValueError(
            f"at most {MAX_ROUTED_MODELS - 1} models besides the primary (top-level `model`), "
            f"got {len(models)}"
        )
    bad = [n for n in models if not re.fullmatch(_MODEL_NAME, n)]
    if bad:
        raise ValueError(
            f"model name {clip_name(bad[0])!r}: must be 1..128 of A-Z a-z 0-9 . _ - "
            "(starting with a letter or digit): it names the model's state files and keys"
        )
    return models


def clip_name(name: str, limit: int = 64) -> str:
    return name if len(name) <= limit else f"{name[:limit]}..."


def sibling_path(path: str, name: str) -> str:
    """`path` for routed model `name`: `var/sidecar.db` -> `var/sidecar.<name>.db`."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.{name}{p.suffix}"))


class Config(ModelSection):
    """The whole configuration file. Its top-level `model`, `variants`, `flag`, `shadow`,
    `experiment` and `drift` are the primary routed model; `models` maps each further
    routed model to its own `ModelSection`. `for_model(name)` is the per-model view the
    wiring builds one routed unit from."""

    listen: ListenConfig = ListenConfig()
    model: Annotated[str, _non_empty("the model name apps call (a non-empty string)")] = Field(
        "", validate_default=True
    )
    upstream: UpstreamConfig = UpstreamConfig()
    server: ServerConfig = ServerConfig()
    control: ControlConfig = Field(default_factory=dict, validate_default=True)
    state: StateConfig = Field(default_factory=dict, validate_default=True)
    analysis: AnalysisConfig = AnalysisConfig()
    predict: PredictConfig = PredictConfig()
    passthrough: PassThroughConfig | None = None  # None: unrouted models get NOT_FOUND
    # Further routed models (name -> its own sections); `analysis` and the rest are shared.
    models: Annotated[dict[str, ModelSection], AfterValidator(_routed_names)] = Field(
        default_factory=dict
    )

    _telemetry: TelemetryConfig = PrivateAttr(default_factory=TelemetryConfig)
    _source: str = PrivateAttr("<embedded>")
    _unit: str = PrivateAttr("")  # a per-model view of a further model: its name

    @model_validator(mode="after")
    def _cross_sections(self, info: ValidationInfo) -> Config:
        context = info.context or {}
        problems = []
        if self.model in self.models:
            problems.append(
                f"models.{clip_name(self.model)}: the primary model (top-level `model`) is "
                "routed already; name each routed model once"
            )
        try:
            self._telemetry = TelemetryConfig.from_environ(context.get("environ", os.environ))
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("\n".join(problems))
        self._source = str(context.get("source", "<embedded>"))
        return self

    @property
    def routed_models(self) -> tuple[str, ...]:
        """Every routed model's name, the primary first."""
        return (self.model, *self.models)

    @property
    def unit(self) -> str:
        """ "" for the file itself and the primary's view; a further model's name in its
        view (its state files and keys carry it)."""
        return self._unit

    def for_model(self, name: str) -> Config:
        """The configuration as one routed model sees it: the top-level model sections are
        `name`'s, and its state lives apart (SQLite: `state.<name>.db` and
        `experiment.<name>.json` next to the primary's; Redis: fleet `<fleet>/<name>`).
        Shared sections stay. KeyError for a name that is not routed."""
        if name == self.model:
            return self
        section = self.models[name]
        state = self.state.model_copy(
            update={
                "path": sibling_path(self.state.path, name),
                "experiment_path": sibling_path(self.state.experiment_path, name),
                "redis": self.state.redis.model_copy(
                    update={"fleet": f"{self.state.redis.fleet}/{name}"}
                ),
            }
        )
        view = self.model_copy(
            update={
                "model": name,
                "variants": section.variants,
                "flag_config": section.flag_config,
                "shadow": section.shadow,
                "experiment": section.experiment,
                "drift": section.drift,
                "state": state,
                "models": {},
            }
        )
        view._flag = section.flag
        view._unit = name
        return view

    @model_validator(mode="after")
    def _versions_and_passthrough(self) -> Config:
        problems: list[str] = []
        if self.passthrough is not None:
            limits = self.passthrough.limits(self.upstream)
            if limits.default_deadline > limits.max_deadline:
                problems.append(
                    "passthrough.default_deadline: must not exceed passthrough.max_deadline "
                    "(or upstream.max_deadline when that is not set)"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _app_tokens_are_not_control_tokens(self) -> Config:
        control = {t.sha256 for t in self.control.auth.tokens}
        for i, token in enumerate(self.predict.auth.tokens):
            if token.sha256 in control:
                raise ValueError(
                    f"predict.auth.tokens[{i}]: the same token as a control.auth credential; "
                    "an app token must not open the Control API"
                )
        return self

    @property
    def telemetry(self) -> TelemetryConfig:
        return self._telemetry

    @property
    def source(self) -> str:
        return self._source

    @property
    def predict_address(self) -> str:
        return self.listen.predict

    @property
    def control_address(self) -> str:
        return self.listen.control

    @property
    def metrics_address(self) -> str:
        return self.listen.metrics


def _routed_experiment_segments(flag: FlagConfig, experiment: ExperimentSettings) -> list[str]:
    """An experiment segment that a segment rule always routes never takes part in the
    weighted split, so it can never have A/B data: refused, naming both."""
    rules = {rule.segment: (i, rule.variant) for i, rule in enumerate(flag.segment_rules)}
    return [
        f"experiment.segments: {segment!r} is always routed to {rules[segment][1]!r} by "
        f"flag.segment_rules[{rules[segment][0]}], so it never enters the A/B split; remove "
        "it from experiment.segments or remove the rule"
        for segment in experiment.segments
        if segment in rules
    ]


MAX_REFERENCE_BYTES = 64 * 1024 * 1024


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number this file may hold")


def read_drift_reference(settings: DriftSettings) -> dict[str, Any]:
    """The drift reference file (JSON ``{series name: [values]}``), checked the way the
    drift tracker will use it; raises ValueError naming the problem (never RecursionError
    or UnicodeDecodeError). At most `MAX_REFERENCE_BYTES`; NaN and infinity refused."""
    path = Path(settings.reference_file)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_REFERENCE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_REFERENCE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_REFERENCE_BYTES} bytes")
    try:
        values = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    try:
        DriftTracker(settings).set_configured_reference(values)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(values, dict):  # pragma: no cover - refused just above
        raise ValueError(f"{path}: not a JSON object")
    return values


# --------------------------------------------------------------------------- errors

_FIELD_PREFIX = re.compile(r"([A-Za-z_][\w.\[\]]*): (.*)", re.DOTALL)
_MAPPING_TYPES = ("dict_type", "model_type", "dataclass_type", "model_attributes_type")
_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "unexpected_keyword_argument": "unknown field",
    "int_type": "must be an integer, got {input!r}",
    "int_from_float": "must be an integer, got {input!r}",
    "int_parsing": "must be an integer, got {input!r}",
    "float_type": "must be a number, got {input!r}",
    "float_parsing": "must be a number, got {input!r}",
    "bool_type": "must be true or false, got {input!r}",
    "bool_parsing": "must be true or false, got {input!r}",
    "string_type": "must be a string, got {input!r}",
    "finite_number": "must be a finite number, got {input!r}",
    "greater_than": "must be > {gt}, got {input!r}",
    "greater_than_equal": "must be >= {ge}, got {input!r}",
    "less_than": "must be < {lt}, got {input!r}",
    "less_than_equal": "must be <= {le}, got {input!r}",
    "tuple_type": "must be a list, got {input!r}",
    "list_type": "must be a list, got {input!r}",
}


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(where: str, message: str) -> str:
    """`where: message`, moving a field path that starts the message into `where`
    (the core's and the validators' messages name the field they are about)."""
    found = _FIELD_PREFIX.fullmatch(message)
    if found:
        field, message = found.groups()
        where = f"{where}.{field}" if where else field
    return f"{where or '<top level>'}: {message}"


def _problems(exc: ValidationError) -> list[str]:
    """One line per problem, each naming its field path (``experiment.metrics[1].name``)."""
    problems: list[str] = []
    for error in exc.errors():
        where = _path(error["loc"])
        kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
        if kind in ("value_error", "assertion_error"):
            messages = str(ctx.get("error", error["msg"])).splitlines()
        elif kind in _MAPPING_TYPES:
            messages = [f"must be a mapping, got {type(given).__name__}"]
        elif kind == "literal_error":
            expected = str(ctx.get("expected", "")).replace("'", "")
            messages = [f"must be one of {expected}, got {given!r}"]
        else:
            template = _MESSAGES.get(kind)
            bounds = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
            messages = [template.format(input=given, **bounds) if template else error["msg"]]
        problems.extend(_join(where, m) for m in messages)
    return problems


# --------------------------------------------------------------------------- reading


def _without_nulls(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _without_nulls(v) for k, v in raw.items() if v is not None}
    if isinstance(raw, list | tuple):
        return [_without_nulls(x) for x in raw]
    return raw


def _prepared(raw: Any) -> Any:
    """YAML ``null`` means "the default" (the key is dropped); a variant is named by its
    key. Done on the document, so that validation stays in JSON mode."""
    doc = _without_nulls(raw)
    _name_variants(doc)
    models = doc.get("models") if isinstance(doc, dict) else None
    if isinstance(models, Mapping):
        for section in models.values():
            _name_variants(section)
    return doc


def _name_variants(section: Any) -> None:
    variants = section.get("variants") if isinstance(section, dict) else None
    if isinstance(variants, Mapping):
        section["variants"] = {
            str(n): {**v, "name": str(n)} if isinstance(v, Mapping) else v
            for n, v in variants.items()
        }


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping (PyYAML keeps the last
    one silently): ``line 9, column 1: duplicate key 'x' (first at line 4)``."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}  # key -> its line
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys given here override the merged ones
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: the base class says so
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first[key] + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def yaml_error(exc: yaml.YAMLError) -> str:
    """One line: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(str(problem).split())}"


# Environment overrides: variable -> the field it sets (over the file's value). Every listen
# address and every path to a secret, plus the state paths an image points at its volume.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "SIDECAR_LISTEN_PREDICT": ("listen", "predict"),
    "SIDECAR_LISTEN_CONTROL": ("listen", "control"),
    "SIDECAR_LISTEN_METRICS": ("listen", "metrics"),
    "SIDECAR_CONTROL_TLS_CERT_FILE": ("control", "tls", "cert_file"),
    "SIDECAR_CONTROL_TLS_KEY_FILE": ("control", "tls", "key_file"),
    "SIDECAR_CONTROL_TLS_CLIENT_CA_FILE": ("control", "tls", "client_ca_file"),
    "SIDECAR_STATE_PATH": ("state", "path"),
    "SIDECAR_STATE_EXPERIMENT_PATH": ("state", "experiment_path"),
    "SIDECAR_REDIS_URL": ("state", "redis", "url"),
    "SIDECAR_REDIS_PASSWORD_FILE": ("state", "redis", "password_file"),
    "SIDECAR_REDIS_TLS_CA_FILE": ("state", "redis", "tls_ca_file"),
    "SIDECAR_ADVERTISE_CONTROL": ("state", "redis", "advertise_control"),
}


def _with_env_overrides(doc: Any, environ: Mapping[str, str]) -> tuple[Any, dict[str, str]]:
    """The document with each set `ENV_OVERRIDES` variable's value in its field (an empty
    value is ignored), and field path -> variable for the error messages."""
    used: dict[str, str] = {}
    if not isinstance(doc, dict):
        return doc, used
    for variable, path in ENV_OVERRIDES.items():
        value = environ.get(variable, "")
        if not value:
            continue
        section = doc
        for key in path[:-1]:
            child = section.get(key)
            if child is None:
                child = section[key] = {}
            if not isinstance(child, dict):
                break  # the file's own shape is wrong: its message says so
            section = child
        else:
            section[path[-1]] = value
            used[".".join(path)] = variable
    return doc, used


def _name_variables(problems: list[str], used: Mapping[str, str]) -> list[str]:
    """A problem about a field an environment variable set says which variable."""
    out = []
    for problem in problems:
        for field, variable in used.items():
            if problem.startswith(f"{field}:") or problem.startswith(f"{field}."):
                problem = f"{problem} (set by ${variable})"
                break
        out.append(problem)
    return out


def parse_config(raw: Any, source: str = "<embedded>", base: Path | None = None) -> Config:
    """Validate a parsed YAML document; raise `ConfigError` listing every problem.

    Validated as JSON (YAML's data model), which is what strictness means for a file:
    lists are arrays, mappings objects, ``"64"`` a string. Then the files `serve` will
    write are checked (`_state_file_problems`). `SIDECAR_*` variables of `ENV_OVERRIDES`
    set their fields over the file's values."""
    try:
        doc, used = _with_env_overrides(_prepared(raw), os.environ)
        text = json.dumps(doc, default=str)
    except (RecursionError, ValueError) as exc:
        raise ConfigError(source, [f"<file>: cannot be read as data: {exc}"]) from None
    context = {"base": base, "source": source, "environ": os.environ}
    try:
        config = Config.model_validate_json(text, context=context)
    except ValidationError as exc:
        raise ConfigError(source, _name_variables(_problems(exc), used)) from None
    problems = _state_file_problems(config)
    if problems:
        raise ConfigError(source, _name_variables(problems, used))
    return config


def _state_file_problems(config: Config) -> list[str]:
    """Every `state.*path` must be a file `serve` can create or replace: not a folder, in
    a folder that exists (or can be made) and is writable. Whether the process may write
    there can differ at run time (another user, a full disk): `serve` reports that too."""
    if getattr(config.state, "backend", "file") == "memory":
        return []
    problems = []
    if config.state.backend == "redis":
        try:
            config.state.redis.password()  # the env variable is set, the file readable
        except ValueError as exc:
            problems.append(str(exc))
    for name, value in config.state:
        if name.endswith("path") and isinstance(value, str) and value:
            problem = _writable_file_problem(Path(value))
            if problem:
                problems.append(f"state.{name}: {problem}")
    return problems


def _writable_file_problem(path: Path) -> str | None:
    if path.is_dir():
        return f"{path} is a folder, not a file"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # serve creates the missing folders under this one
    if not folder.is_dir():
        return f"{folder} is not a folder (needed for {path})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable (needed for {path})"
    return None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML configuration file (duplicate keys refused)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"<file>: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"<file>: not UTF-8 text (byte {exc.start})"]) from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"<file>: not valid YAML: {yaml_error(exc)}"]) from None
    except RecursionError:
        raise ConfigError(source, ["<file>: not valid YAML: nested too deeply"]) from None
    return parse_config(raw, source, Path(path).resolve().parent)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file."""
    schema = Config.model_json_schema(by_alias=True)
    schema["title"] = "rollout-sidecar configuration"
    return schema


def env_log_format() -> str:
    """Log renderer: SIDECAR_LOG_FORMAT=json (default) or console."""
    value = os.environ.get("SIDECAR_LOG_FORMAT", "json")
    return value if value in ("json", "console") else "json"
