"""`sidecarctl`: the operator's command line for the sidecar's Control API.

Run `sidecarctl --help` and `sidecarctl COMMAND --help`. Exit codes: 0 done, 1 the sidecar
refused (message on stderr), 2 usage error, 3 the sidecar could not be reached, 5 `rollout
status --watch` saw the rollout end ABORTED or ROLLED_BACK.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import yaml

from clients.control import ControlClient, ControlError
from clients.render_text import (
    render_audit,
    render_drill,
    render_experiment,
    render_fleet,
    render_models,
    render_overrides,
    render_rollout,
    render_shadow,
    render_state,
)
from clients.report_html import ReportExtraMissing, render_html, require_matplotlib
from clients.views import (
    ACTIVE_PHASES,
    audit_entry_to_dict,
    drill_to_dict,
    experiment_to_dict,
    fleet_to_dict,
    models_to_dict,
    rollout_to_dict,
    shadow_to_dict,
    state_to_dict,
)
from sidecar._proto.sidecar.v1 import control_pb2 as cpb

DEFAULT_TARGET = "127.0.0.1:8501"
TARGET_ENV = "SIDECARCTL_TARGET"
TOKEN_ENV = "SIDECARCTL_TOKEN"
MODEL_ENV = "SIDECARCTL_MODEL"
MAX_MODEL_NAME = 256  # the sidecar's bound on the x-model header

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_FLEET_LAGGING = 4
EXIT_ROLLOUT_FAILED = 5  # rollout status --watch: the rollout ended ABORTED or ROLLED_BACK
FAILED_PHASES = ("ABORTED", "ROLLED_BACK")

MAX_BP = 10_000

_Formatter = argparse.RawDescriptionHelpFormatter
OUTPUT_FORMATS = ("table", "json", "yaml")
SHELLS = ("bash", "zsh")

DESCRIPTION = """\
Operate a running rollout sidecar through its Control API: inspect the routing state, move
traffic between the stable and canary model variants, pin users or segments to a variant,
flip the kill switch, promote or roll back (every request to stable, pinned users and
segments included, until `rules restore`), run a gated rollout plan (shadow, canary steps,
promote) and rehearse an automatic rollback, and read the audit log, the shadow comparison
and the experiment report (A/B verdicts, as tables, JSON or a self-contained HTML page).

Every write needs --reason (recorded in the audit log) and accepts --expect-revision N:
the write is refused (exit 1, ABORTED) if the state is no longer at revision N, so two
operators cannot overwrite each other's change unseen. Writes take effect from the next
request and print the new state (rollout verbs: the rollout) plus "revision A -> B".

Credentials: --token, else --token-file, else $SIDECARCTL_TOKEN (sent as a bearer token;
never printed). Reads need a viewer token, writes an operator token. Prefer --token-file or
the environment variable: a --token value is visible to other users in the process list.

A fleet (sidecars sharing one state in Redis) is addressed through any member: point
--target at one of them, at a Service in front of them all, or list several
(--target ipv4:10.0.0.7:8501,10.0.0.8:8501: the first that answers is used).

Several routed models (configuration `models:`): every command addresses one of them,
--model NAME (else $SIDECARCTL_MODEL, else the sidecar's primary model), each with its own
state, audit log, rollout and experiment. `sidecarctl models` lists them; an unknown name
is refused (exit 1, NOT_FOUND naming the routed models).

Exit codes: 0 done; 1 the sidecar refused the call (error: CODE: message on stderr);
2 usage error; 3 the sidecar could not be reached (UNAVAILABLE / DEADLINE_EXCEEDED);
4 a write with --wait was stored, but some fleet members had not applied it in time;
5 `rollout status --watch` saw the rollout end ABORTED or ROLLED_BACK (for CI).

Fleet (state.backend: redis): every member serves the same state; a write through any
member is stored in Redis and acknowledged, and every member applies it at once. With
--wait the answer comes once every live member has applied it (or --wait-timeout passed,
listing those that had not). `sidecarctl fleet` lists the members. `--all` runs a read
command against every live member (the Control address each advertises in its heartbeat,
state.redis.advertise_control) and labels each answer; exit 0 when every member answered,
else the largest member exit code. Writes refuse --all: one member stores a write for all."""

EPILOG = """\
examples:
  export SIDECARCTL_TARGET=10.0.0.7:8501
  sidecarctl --token-file ~/.sidecar-token status
  sidecarctl status --watch --output json
  sidecarctl weights stable=95% canary=5% --reason "canary step 1" --expect-revision 7
  sidecarctl kill on --reason "canary error rate 4x stable"
  sidecarctl kill on --wait --reason "incident 42"     # answered once every member applied it
  sidecarctl fleet
  sidecarctl models                                     # the routed models
  sidecarctl --model ranker weights canary=10% stable=90% --reason "ranker canary"
  sidecarctl --all status                               # every live member's answer
  sidecarctl override set user-42 canary --reason "QA account sees the new model"
  sidecarctl promote --reason "canary healthy for 24h"
  sidecarctl rollback --reason "p95 regression"         # overrides and segment rules suspended
  sidecarctl rules restore --reason "canary fixed"      # ... until restored
  sidecarctl rollout start --reason "model v2" && sidecarctl rollout status --watch
  sidecarctl drill --reason "quarterly rollback rehearsal"
  sidecarctl report --html experiment.html
  sidecarctl audit --limit 20
  sidecarctl status -o yaml
  source <(sidecarctl completion bash)"""

PLAN_FORMAT = """\
plan file (--plan): JSON (*.json) or YAML (anything else), a list of stages in order:
  - name: shadow            # required, unique; shown by `rollout status`
    kind: shadow            # required: shadow | canary | promote
    min_duration: 600       # seconds the stage lasts at least (or "10m", "1h"); default 0
    min_samples: 1000       # comparisons (shadow) or canary requests at least; default 0
  - name: canary-5%
    kind: canary
    canary_percent: 5       # the canary's share; or canary_bp: 500 (10000 = 100%)
    min_duration: 15m
    min_samples: 500
  - name: canary-25%
    kind: canary
    canary_bp: 2500
    min_duration: 15m
    min_samples: 2000
  - name: canary-50%
    kind: canary
    canary_percent: 50
    min_duration: 30m
    ab_gate: true           # also wait for the A/B verdict (Ship B or Equivalent passes,
                            # Keep A rolls back); needs experiment.metrics in the config
    max_drift_psi: 0.25     # roll back when an input or prediction PSI reaches 0.25; 0: off
    progress_deadline: 2h   # report the stage stalled if a gate still waits after this
                            # (default: the sidecar's analysis.progress_deadline)
  - name: promote           # the canary becomes stable (last stage, optional)
    kind: promote
Shadow stages come first, canary shares must increase, promote is last. The sidecar refuses
(exit 1, FAILED_PRECONDITION) a plan that skips steps: no shadow stage while a shadow variant
is configured, a first canary stage above 5%, or a step more than 5x the previous one;
--force starts it anyway and records the skipped steps in the audit log. Without --plan the
sidecar's default plan runs: shadow (if configured), 5%, 25%, 50%, 100%, promote."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose error messages never show a secret (the bearer token)."""

    secrets: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        text = _redact(f"{self.prog}: error: {message}\n", self.secrets)
        self.exit(EXIT_USAGE, text)


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


# -- argument types ------------------------------------------------------------------------


def parse_weight(text: str) -> tuple[str, int]:
    """`VARIANT=BP` (integer basis points, 0..10000) or `VARIANT=P%` (at most 2 decimals)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    value = value.strip()
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected VARIANT=BASIS_POINTS (e.g. canary=500) or VARIANT=PERCENT% "
            "(e.g. canary=5%)"
        )
    if value.endswith("%"):
        try:
            percent = Decimal(value[:-1])
        except InvalidOperation:
            percent = Decimal("NaN")
        bp_exact = percent * 100 if percent.is_finite() else percent
        if not bp_exact.is_finite() or bp_exact != bp_exact.to_integral_value():
            raise argparse.ArgumentTypeError(
                f"{text!r}: a percentage must be a number with at most 2 decimals (e.g. 0.25%)"
            )
        bp = int(bp_exact)
    else:
        if not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"{text!r}: basis points must be a whole number from 0 to 10000 "
                "(or use a percentage such as 5%)"
            )
        bp = int(value)
    if not 0 <= bp <= MAX_BP:
        raise argparse.ArgumentTypeError(f"{text!r}: weight must be between 0 and 100% (10000 bp)")
    return name, bp


def _model_name(text: str) -> str:
    """A routed model's name: non-empty printable ASCII (it travels as gRPC metadata)."""
    if not text or len(text) > MAX_MODEL_NAME or not (text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError(
            f"a model name is 1..{MAX_MODEL_NAME} printable ASCII characters"
        )
    return text


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the reason must not be empty")
    return text


def _revision(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a revision is 0 (no check) or positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("the interval must be a positive number of seconds")
    return value


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


# -- plan files ----------------------------------------------------------------------------


class PlanFileError(ValueError):
    """The --plan file cannot be read or is not a well-formed list of stages (exit 2)."""


#: The sidecar's bounds on a plan (sidecar/core/limits.py), checked here first.
MAX_PLAN_STAGES = 32
MAX_STAGE_NAME_BYTES = 256


_PLAN_KINDS = {
    "shadow": cpb.STAGE_KIND_SHADOW,
    "canary": cpb.STAGE_KIND_CANARY,
    "promote": cpb.STAGE_KIND_PROMOTE,
}
_STAGE_FIELDS = (
    "name", "kind", "canary_percent", "canary_bp", "min_duration", "min_samples", "ab_gate",
    "max_drift_psi", "progress_deadline",
)  # fmt: skip
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[hms])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plan_percent(value: object) -> int:
    """canary_percent (a number, or text such as "5%") as basis points."""
    if isinstance(value, str):
        text = value.strip().removesuffix("%")
    elif _is_number(value):
        _finite(value)
        text = repr(value)  # the shortest exact spelling: 0.1 -> "0.1"
    else:
        raise ValueError(f"must be a number from 0 to 100, e.g. 5 or 0.5, got {value!r}")
    try:
        percent = Decimal(text)
    except InvalidOperation:
        percent = Decimal("NaN")
    bp = percent * 100 if percent.is_finite() else percent
    if not bp.is_finite() or bp != bp.to_integral_value() or not 0 <= bp <= MAX_BP:
        raise ValueError(f"must be a number from 0 to 100 with at most 2 decimals, got {value!r}")
    return int(bp)


def _plan_bp(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BP:
        raise ValueError(f"must be a whole number of basis points from 0 to 10000, got {value!r}")
    return value


def _finite(value: object) -> None:
    """NaN and +-inf are refused by name (JSON and YAML both can spell them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")


def _plan_duration(value: object) -> float:
    """min_duration: seconds as a number, or text such as "900", "15m", "1h30m", "90s"."""
    if isinstance(value, bool):
        raise ValueError(f"must be seconds (e.g. 900), got {value!r}")
    _finite(value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        parts = _DURATION_PART.findall(value.strip())
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in parts)
    elif isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        seconds = float(value)
    else:
        raise ValueError(f'must be seconds (e.g. 900) or a duration such as "15m", got {value!r}')
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"must be 0 or more seconds, got {value!r}")
    return seconds


def _plan_samples(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"must be a whole number >= 0, got {value!r}")
    return value


def _plan_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _plan_psi(value: object) -> float:
    _finite(value)
    if not _is_number(value) or not 0 <= float(value) <= 10:  # type: ignore[arg-type]
        raise ValueError(f"must be a PSI from 0 (off) to 10, e.g. 0.25, got {value!r}")
    return float(value)  # type: ignore[arg-type]


#: Optional stage fields: (plan file key, parser, RolloutStage attribute), in checking order.
_STAGE_OPTIONS: tuple[tuple[str, Callable[[object], Any], str], ...] = (
    ("canary_percent", _plan_percent, "canary_bp"),
    ("canary_bp", _plan_bp, "canary_bp"),
    ("min_duration", _plan_duration, "min_duration_seconds"),
    ("min_samples", _plan_samples, "min_samples"),
    ("ab_gate", _plan_flag, "ab_gate"),
    ("max_drift_psi", _plan_psi, "max_drift_psi"),
    ("progress_deadline", _plan_duration, "progress_deadline_seconds"),
)


def _stage_name(item: Mapping[Any, Any], where: str) -> str:
    for key in item:
        if key not in _STAGE_FIELDS:
            raise PlanFileError(
                f"{where}: unknown field {key!r} (fields: {', '.join(_STAGE_FIELDS)})"
            )
    if "name" not in item:
        raise PlanFileError(f"{where}: field name: missing")
    name = item["name"]
    if not (isinstance(name, str) and name.strip()):
        raise PlanFileError(f"{where}: field name: must be non-empty text, got {name!r}")
    if len(name.encode("utf-8")) > MAX_STAGE_NAME_BYTES:
        raise PlanFileError(
            f"{where}: field name: at most {MAX_STAGE_NAME_BYTES} bytes, got "
            f"{len(name.encode('utf-8'))}"
        )
    return name


def _stage_kind(item: Mapping[Any, Any], where: str) -> cpb.StageKind:
    if "kind" not in item:
        raise PlanFileError(f"{where}: field kind: missing (shadow, canary or promote)")
    kind = item["kind"]
    if not isinstance(kind, str) or kind.strip().lower() not in _PLAN_KINDS:
        raise PlanFileError(f"{where}: field kind: must be shadow, canary or promote, got {kind!r}")
    return _PLAN_KINDS[kind.strip().lower()]


def _set_stage_options(stage: cpb.RolloutStage, item: Mapping[Any, Any], where: str) -> None:
    has_percent, has_bp = "canary_percent" in item, "canary_bp" in item
    if has_percent and has_bp:
        raise PlanFileError(f"{where}: fields canary_percent and canary_bp: give one, not both")
    for key, parse, attribute in _STAGE_OPTIONS:
        if key in item:
            try:
                setattr(stage, attribute, parse(item[key]))
            except ValueError as exc:
                raise PlanFileError(f"{where}: field {key}: {exc}") from None
    if stage.kind == cpb.STAGE_KIND_CANARY and not (has_percent or has_bp):
        raise PlanFileError(
            f"{where}: field canary_percent: missing (a canary stage needs canary_percent or "
            "canary_bp)"
        )


def _plan_stage(item: object, where: str) -> cpb.RolloutStage:
    if not isinstance(item, Mapping):
        raise PlanFileError(f"{where}: must be a mapping with at least name and kind")
    name = item.get("name")
    if isinstance(name, str) and name.strip():
        where = f"{where} ({name[:64]!r})"
    stage = cpb.RolloutStage(name=_stage_name(item, where), kind=_stage_kind(item, where))
    _set_stage_options(stage, item, where)
    return stage


def parse_plan(data: object, source: str = "plan") -> cpb.RolloutPlan:
    """A loaded plan document (a list of stages, or {stages: [...]}) as a RolloutPlan.

    Checks the syntax only (fields, types, ranges); whether the plan is sound (order,
    increasing shares, skipped steps) is the sidecar's call. Raises PlanFileError naming
    the stage and the field.
    """
    if isinstance(data, Mapping) and set(data) == {"stages"}:
        data = data["stages"]
    if not isinstance(data, list) or not data:
        raise PlanFileError(
            f"{source}: expected a non-empty list of stages (see `sidecarctl rollout start "
            f"--help`), got {type(data).__name__}"
        )
    if len(data) > MAX_PLAN_STAGES:
        raise PlanFileError(f"{source}: at most {MAX_PLAN_STAGES} stages, got {len(data)}")
    return cpb.RolloutPlan(
        stages=[_plan_stage(item, f"{source}: stage {i + 1}") for i, item in enumerate(data)]
    )


def _yaml_problem(exc: Exception) -> str:
    """One line: the problem and where (line, column)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

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


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {key!r}")
        data[key] = value
    return data


def load_plan(path: str) -> cpb.RolloutPlan:
    """Read a plan file: JSON when the name ends in .json, YAML otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanFileError(f"cannot read --plan {path}: {exc}") from None
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        except (ValueError, RecursionError) as exc:
            raise PlanFileError(f"{path}: not valid JSON: {exc}") from None
    else:
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise PlanFileError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    return parse_plan(data, source=path)


# -- parser --------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Connection and output options; accepted before or after the command."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=default(None),
        help=f"the sidecar's control address (default: ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token",
        metavar="TOKEN",
        default=default(None),
        help="bearer token (overrides --token-file and $SIDECARCTL_TOKEN)",
    )
    group.add_argument(
        "--token-file",
        metavar="PATH",
        default=default(None),
        help=f"read the bearer token from PATH (overrides ${TOKEN_ENV})",
    )
    group.add_argument(
        "--ca-file",
        metavar="PATH",
        default=default(None),
        help="PEM CA bundle to verify the sidecar's TLS certificate (enables TLS)",
    )
    group.add_argument(
        "--cert-file",
        metavar="PATH",
        default=default(None),
        help="PEM client certificate for mutual TLS (with --key-file)",
    )
    group.add_argument(
        "--key-file",
        metavar="PATH",
        default=default(None),
        help="PEM private key of the client certificate",
    )
    group.add_argument(
        "--model",
        metavar="NAME",
        type=_model_name,
        default=default(None),
        help=f"the routed model to address (sent as x-model; default: ${MODEL_ENV}, else the "
        "sidecar's primary model); `sidecarctl models` lists them",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default=default("table"),
        help="table for people (default), json or yaml for scripts",
    )
    group.add_argument(
        "--all",
        action="store_true",
        default=default(False),
        help="fleet: run this read command against every live member (listed by the one "
        "--target reaches), each answer labelled; writes are refused (use --wait)",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=default(5.0),
        help="deadline of each call (default: 5; status --watch has none)",
    )


@dataclass
class _CommandFactory:
    """Adds subcommands: each gets the connection and output options (`common`), writes also
    --reason and --expect-revision (`write`), and an epilog with its examples."""

    commands: argparse._SubParsersAction[_Parser]
    common: _Parser
    write: _Parser
    secrets: Sequence[str]

    def add(
        self,
        name: str,
        help_text: str,
        description: str,
        example: str | Sequence[str],
        *,
        writes: bool = False,
        sub: argparse._SubParsersAction[_Parser] | None = None,
        notes: str = "",
    ) -> _Parser:
        examples = [example] if isinstance(example, str) else list(example)
        epilog = ("example:" if len(examples) == 1 else "examples:") + "".join(
            f"\n  {e}" for e in examples
        )
        if notes:
            epilog += f"\n\n{notes}"
        created = (sub or self.commands).add_parser(
            name,
            help=help_text,
            description=description,
            epilog=epilog,
            formatter_class=_Formatter,
            parents=[self.write, self.common] if writes else [self.common],
        )
        created.secrets = self.secrets
        return created


def _write_options() -> _Parser:
    """--reason (required) and --expect-revision, shared by every write."""
    write = _Parser(add_help=False)
    write_group = write.add_argument_group("write options")
    write_group.add_argument(
        "--reason",
        required=True,
        type=_reason,
        help="why (required; recorded in the audit log with your identity)",
    )
    write_group.add_argument(
        "--expect-revision",
        metavar="N",
        type=_revision,
        default=0,
        help="refuse (ABORTED, exit 1) unless the state is at revision N (default 0: no check)",
    )
    write_group.add_argument(
        "--wait",
        action="store_true",
        help="fleet: answer once every live member has applied the write (routing writes; "
        "exit 4 listing the members that had not within --wait-timeout)",
    )
    write_group.add_argument(
        "--wait-timeout",
        metavar="SECONDS",
        type=_wait_seconds,
        default=30.0,
        help="how long --wait waits (default 30, at most 300)",
    )
    return write


def _wait_seconds(text: str) -> float:
    value = _positive_float(text)
    if value > 300:
        raise argparse.ArgumentTypeError("at most 300 seconds")
    return value


def build_parser(secrets: Sequence[str] = ()) -> _Parser:
    """The argument parser; `secrets` are redacted from its error messages."""
    parser = _Parser(
        prog="sidecarctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.secrets = secrets
    parser.add_argument("--version", action="version", version=f"sidecarctl {version()}")
    _add_global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _add_global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    factory = _CommandFactory(commands, common, _write_options(), secrets)
    _add_routing_commands(factory)
    _add_rule_commands(factory)
    _add_promotion_commands(factory)
    _add_report_commands(factory)
    _add_rollout_commands(factory)
    _add_fleet_commands(factory)
    _add_model_commands(factory)
    _add_completion_command(commands)
    return parser


def _add_fleet_commands(c: _CommandFactory) -> None:
    """fleet: the members sharing this sidecar's state (state.backend: redis)."""
    p = c.add(
        "fleet",
        "list the fleet's members: applied revision, lag, readiness",
        "List the sidecars sharing this one's state through Redis (state.backend: redis):\n"
        "each member's id, host, version, the revision it has applied, how far behind the\n"
        "answering member it is (LAG), whether its stable model is ready, whether it is live\n"
        "(heartbeat within state.redis.member_ttl) and when it was last seen. Read-only.",
        "sidecarctl fleet --output json",
    )
    p.set_defaults(handler=cmd_fleet)


def _add_model_commands(c: _CommandFactory) -> None:
    """models: the routed models of this sidecar."""
    p = c.add(
        "models",
        "list the routed models: flag, stable, canary, weights, kill switch, revision",
        "List every model this sidecar routes (the primary first), each with its own flag in\n"
        "force. Every other command addresses one of them: --model NAME (or $SIDECARCTL_MODEL;\n"
        "default: the primary). Read-only.",
        ["sidecarctl models", "sidecarctl --model ranker weights stable=90 canary=10 --reason r"],
    )
    p.set_defaults(handler=cmd_models)


def _add_completion_command(commands: argparse._SubParsersAction[_Parser]) -> None:
    """completion: a shell completion script (needs no sidecar)."""
    p = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for SHELL. bash: `source <(sidecarctl completion "
        "bash)` (or save it under /etc/bash_completion.d/); zsh: `source <(sidecarctl "
        "completion zsh)`. Completes commands, subcommands and options.",
        formatter_class=_Formatter,
    )
    p.add_argument("shell", choices=SHELLS, help="bash or zsh")
    p.set_defaults(handler=None)


def version() -> str:
    """The installed package's version ("unknown" when run from a tree not installed)."""
    from importlib import metadata

    try:
        return metadata.version("rollout-sidecar")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script built from the parser itself (so it never goes stale): for each
    command path, the subcommands and options that may follow."""
    words: dict[str, list[str]] = {}

    def walk(current: argparse.ArgumentParser, path: str) -> None:
        found: list[str] = []
        for action in current._actions:
            found += [o for o in action.option_strings if o.startswith("--")]
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append(name)
                    walk(sub, f"{path} {name}".strip())
            elif action.choices and not action.option_strings:
                found += [str(c) for c in action.choices]
        words[path] = sorted(set(found))

    walk(parser, "")
    cases = "\n".join(
        f'        "{path}") words="{" ".join(options)}" ;;'
        for path, options in sorted(words.items())
    )
    script = f"""# sidecarctl completion ({shell}); generated by `sidecarctl completion {shell}`
_sidecarctl() {{
    local cur path word i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        [[ "$word" == -* ]] && continue
        case "$path${{path:+ }}$word" in
{_known_paths(words)}
        esac
    done
    local words=""
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _sidecarctl sidecarctl
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def _known_paths(words: Mapping[str, list[str]]) -> str:
    paths = " | ".join(f'"{p}"' for p in sorted(words) if p)
    return f'            {paths}) path="$path${{path:+ }}$word" ;;'


def _add_routing_commands(c: _CommandFactory) -> None:
    """status, weights, kill: read the routing state, split traffic, the kill switch."""
    p = c.add(
        "status",
        "show the routing state (variants, weights, kill switch, rules, revision)",
        "Show the routing state in force: each variant with its role, weight and requests\n"
        "served, the kill switch, user overrides, segment rules, shadow settings and the\n"
        "last change. Read-only. With --watch, a RUNNING or PAUSED rollout's stage, progress\n"
        "and gates are shown under each state (for a live view: `rollout status --watch`).",
        "sidecarctl status --watch",
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="keep running and print the state again on every change, and every --interval "
        "seconds with fresh request counts, until Ctrl-C (json: one object per line)",
    )
    p.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_interval,
        default=5.0,
        help="with --watch: re-read and print the state this often between changes (default: 5)",
    )
    p.set_defaults(handler=cmd_status)

    p = c.add(
        "weights",
        "set the traffic split between variants",
        "Set the share of traffic each variant gets, in basis points (10000 = 100%) or as a\n"
        "percentage. The weights must sum to 100%. Takes effect from the next request;\n"
        "the same user stays in the canary as its weight grows. Ignored while the kill switch\n"
        "is on, and for users or segments pinned by an override or rule.",
        'sidecarctl weights stable=95% canary=5% --reason "canary step 1" --expect-revision 7',
        writes=True,
    )
    p.add_argument(
        "weights",
        nargs="+",
        metavar="VARIANT=WEIGHT",
        type=parse_weight,
        help="e.g. canary=500 (basis points) or canary=5%%",
    )
    p.set_defaults(handler=cmd_weights)

    p = c.add(
        "kill",
        "turn the kill switch on (all traffic to stable) or off",
        "Kill switch on: from the next request every request goes to the stable variant,\n"
        "whatever the weights, overrides and segment rules say. Off: those apply again.",
        'sidecarctl kill on --reason "canary error rate 4x stable"',
        writes=True,
    )
    p.add_argument("position", choices=("on", "off"), help="on or off")
    p.set_defaults(handler=cmd_kill)


def _add_rule_commands(c: _CommandFactory) -> None:
    """override, segment: pin a user or a segment to a variant."""
    p = c.add(
        "override",
        "pin one user (targeting key) to a variant, or remove the pin",
        "User overrides send every request with a given targeting key (x-user-id) to one\n"
        "variant, ahead of segment rules and the weighted split (but not the kill switch).",
        'sidecarctl override set user-42 canary --reason "QA account"',
    )
    override = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = c.add(
        "list",
        "list the user overrides (all of them, paged)",
        "List every user override in targeting-key order (`status` shows only the first\n"
        "ones), following the server's pages. Read-only.",
        ["sidecarctl override list", "sidecarctl override list --prefix qa- --output json"],
        sub=override,
    )
    p.add_argument("--prefix", default="", help="only targeting keys starting with PREFIX")
    p.add_argument(
        "--limit",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="stop after N overrides (default 0: all)",
    )
    p.set_defaults(handler=cmd_override_list)
    p = c.add(
        "set",
        "pin KEY to VARIANT",
        "Send every request with targeting key KEY to VARIANT from the next request on.",
        'sidecarctl override set user-42 canary --reason "QA account"',
        writes=True,
        sub=override,
    )
    p.add_argument("key", metavar="KEY", help="the targeting key (user id)")
    p.add_argument("variant", metavar="VARIANT", help="a configured variant name")
    p.set_defaults(handler=cmd_override_set)
    p = c.add(
        "clear",
        "remove KEY's pin",
        "Remove the pin of targeting key KEY; its requests follow segment rules and weights.",
        'sidecarctl override clear user-42 --reason "QA done"',
        writes=True,
        sub=override,
    )
    p.add_argument("key", metavar="KEY", help="the targeting key (user id)")
    p.set_defaults(handler=cmd_override_clear)

    p = c.add(
        "segment",
        "route a whole segment to a variant, or remove the rule",
        "Segment rules send every request of a segment (x-segment) to one variant, after\n"
        "user overrides and ahead of the weighted split (but not the kill switch).",
        'sidecarctl segment set beta canary --reason "beta testers get the canary"',
    )
    segment = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = c.add(
        "set",
        "route SEGMENT to VARIANT",
        "Send every request of SEGMENT to VARIANT from the next request on.",
        'sidecarctl segment set beta canary --reason "beta testers get the canary"',
        writes=True,
        sub=segment,
    )
    p.add_argument("segment", metavar="SEGMENT", help="a segment name")
    p.add_argument("variant", metavar="VARIANT", help="a configured variant name")
    p.set_defaults(handler=cmd_segment_set)
    p = c.add(
        "clear",
        "remove SEGMENT's rule",
        "Remove the rule of SEGMENT; its requests follow user overrides and weights.",
        'sidecarctl segment clear beta --reason "beta over"',
        writes=True,
        sub=segment,
    )
    p.add_argument("segment", metavar="SEGMENT", help="a segment name")
    p.set_defaults(handler=cmd_segment_clear)

    p = c.add(
        "rules",
        "restore the user overrides and segment rules a rollback suspended",
        "A rollback (manual, automatic or an aborted rollout) sends every request to stable:\n"
        "the user overrides and segment rules are kept but suspended (`status` shows them\n"
        "as SUSPENDED, with the rollback's reason). Rules set while suspended are stored\n"
        "suspended too. Only `rules restore` applies them again (audited).",
        'sidecarctl rules restore --reason "canary fixed; QA users back on it"',
    )
    rules = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = c.add(
        "restore",
        "apply the suspended user overrides and segment rules again",
        "Apply the user overrides and segment rules again from the next request on (refused,\n"
        "exit 1 FAILED_PRECONDITION, when they are not suspended).",
        'sidecarctl rules restore --reason "canary fixed; QA users back on it"',
        writes=True,
        sub=rules,
    )
    p.set_defaults(handler=cmd_rules_restore)


def _add_promotion_commands(c: _CommandFactory) -> None:
    """promote, rollback: the blue-green switches."""
    p = c.add(
        "promote",
        "make the canary the new stable, with all traffic",
        "The canary becomes the stable variant and gets 100% of traffic. The old stable stays\n"
        "configured and warm as the canary at weight 0: `sidecarctl rollback` brings it back.",
        'sidecarctl promote --reason "canary healthy for 24h" --expect-revision 12',
        writes=True,
    )
    p.set_defaults(handler=cmd_promote)

    p = c.add(
        "rollback",
        "send all traffic to stable (overrides and segment rules too); or undo a promotion",
        "All traffic goes to the stable variant at once, including users and segments pinned\n"
        "by an override or segment rule: those rules are kept but suspended until\n"
        "`sidecarctl rules restore`. If nothing but stable has traffic, this reverts the last\n"
        "promotion instead: the previous stable serves everything again (rules suspended too).\n"
        "The automatic rollback (health-checker) and `rollout abort` do the same. The kill\n"
        "switch is the separate, instant lever that ignores every rule while it is on.",
        'sidecarctl rollback --reason "p95 latency regression"',
        writes=True,
    )
    p.set_defaults(handler=cmd_rollback)


def _add_report_commands(c: _CommandFactory) -> None:
    """audit, shadow, report: read-only reports."""
    p = c.add(
        "audit",
        "show the audit log (who changed what, when and why)",
        "Show the most recent audit entries, newest last: time, who, which call, revision\n"
        "before -> after, the reason and what changed. Read-only.",
        "sidecarctl audit --limit 20",
    )
    p.add_argument(
        "-n",
        "--limit",
        metavar="N",
        type=_non_negative_int,
        default=50,
        help="show the N most recent entries (default 50; 0 = all)",
    )
    p.set_defaults(handler=cmd_audit)

    p = c.add(
        "shadow",
        "show the shadow comparison report",
        "Show what the shadow comparison has recorded: requests sampled and sent to the\n"
        "shadow variant, copies dropped, agreement with the served answer, shadow errors,\n"
        "latency against the primary and the last disagreements. Read-only; shadow answers\n"
        "are never served.",
        "sidecarctl shadow --output json",
    )
    p.set_defaults(handler=cmd_shadow)

    p = c.add(
        "report",
        "show the experiment report (A/B verdicts); --html writes a page with plots",
        "Show the experiment between the stable (A, control) and canary (B, treatment)\n"
        "variants since the current traffic split started: warnings first, the sample-ratio\n"
        "check (a mismatch blocks every verdict), then per outcome metric the verdict in words\n"
        "(Ship B / Keep A / Equivalent / Continue / Blocked) and why, each arm's rate or mean\n"
        "with its interval, the difference B - A with its anytime-valid interval (valid however\n"
        "often you look), the always-valid p-value (the fixed-horizon one is shown but is NOT\n"
        "valid under repeated looks), sample sizes, segments with adjusted p-values and any\n"
        "Simpson's paradox warning; then the shadow comparison and input/prediction drift.\n"
        "--html PATH also writes one self-contained HTML file (plots inline, no external\n"
        "assets) with the decision summary at the top, and prints its path. Read-only.",
        [
            "sidecarctl report",
            "sidecarctl report --metric conversion --html experiment.html",
            "sidecarctl report --json --no-history",
        ],
    )
    p.add_argument(
        "--metric",
        dest="metrics",
        metavar="M",
        action="append",
        default=[],
        help="only this outcome metric (repeat for several; default: every configured metric)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON (same as --output json)",
    )
    p.add_argument(
        "--html",
        metavar="PATH",
        help="also write the report as a self-contained HTML page with plots to PATH",
    )
    p.add_argument(
        "--no-history",
        action="store_true",
        help="leave out the per-look history (smaller; the HTML then has no effect-over-time plot)",
    )
    p.set_defaults(handler=cmd_report)


def _add_rollout_commands(c: _CommandFactory) -> None:
    """rollout start|pause|resume|abort|status, and drill."""
    p = c.add(
        "rollout",
        "run a gated rollout plan: shadow, canary steps, promote",
        "A rollout plan moves traffic to the canary variant in stages and advances only through\n"
        "gates: each stage lasts at least its minimum time and number of samples, and its gates\n"
        "(the health verdict against stable; for shadow stages agreement, latency and errors)\n"
        "must pass. A failing gate rolls back automatically: all traffic to stable. The default\n"
        "plan: shadow (the canary gets mirrored copies and serves 0%), then 5%, 25%, 50% and\n"
        "100% of traffic, then promote (the canary becomes stable; the old stable stays warm as\n"
        "the rollback target). Actions: start, pause, resume, abort, status.",
        [
            'sidecarctl rollout start --reason "iris v2"',
            "sidecarctl rollout status --watch",
            'sidecarctl rollout pause --reason "investigating p95 spike"',
            'sidecarctl rollout abort --reason "accuracy regression in offline eval"',
        ],
    )
    rollout = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = c.add(
        "start",
        "start a rollout plan (the sidecar's default plan, or --plan FILE)",
        "Start a rollout. Traffic: at once all traffic goes to the stable variant (any canary\n"
        "weight is reset to 0); then each stage sets the canary's share (a shadow stage mirrors\n"
        "copies of requests to it and serves 0%), and the plan moves on only when the stage's\n"
        "minimum time and samples are reached and all its gates pass. A failing gate rolls back\n"
        "to stable automatically; the promote stage makes the canary the new stable.\n"
        "Refused (exit 1, FAILED_PRECONDITION) when the stable variant is not ready, no canary\n"
        "is configured, the kill switch is on, a rollout is already running, or the plan skips\n"
        "steps (unless --force). Follow it with `sidecarctl rollout status --watch`.",
        [
            'sidecarctl rollout start --reason "iris v2"',
            'sidecarctl rollout start --plan plan.yaml --reason "iris v2" --expect-revision 12',
            'sidecarctl rollout start --plan fast.json --force --reason "hotfix (INC-123)"',
        ],
        writes=True,
        sub=rollout,
        notes=PLAN_FORMAT,
    )
    p.add_argument(
        "--plan",
        metavar="FILE",
        help="the stages to run, JSON or YAML (format below; default: the sidecar's plan)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="start a plan that skips steps anyway (the skipped steps are audited)",
    )
    p.set_defaults(handler=cmd_rollout_start)
    p = c.add(
        "pause",
        "hold the rollout at its current stage",
        "Hold the rollout at its current stage: the traffic split stays as it is and the plan\n"
        "does not advance; paused time does not count towards the stage's minimum duration.\n"
        "The health checker still rolls back automatically if the canary fails.\n"
        "`sidecarctl rollout resume` continues.",
        'sidecarctl rollout pause --reason "investigating p95 spike"',
        writes=True,
        sub=rollout,
    )
    p.set_defaults(handler=cmd_rollout_pause)
    p = c.add(
        "resume",
        "continue a paused rollout",
        "Continue a paused rollout at the stage where it was paused, with the same traffic\n"
        "split; the stage's time counts again from where it stopped.",
        'sidecarctl rollout resume --reason "p95 spike was the load test"',
        writes=True,
        sub=rollout,
    )
    p.set_defaults(handler=cmd_rollout_resume)
    p = c.add(
        "abort",
        "stop the rollout and send all traffic to stable",
        "Stop the plan (phase ABORTED) and send all traffic to the stable variant at once, as\n"
        "`sidecarctl rollback` does (user overrides and segment rules suspended until\n"
        "`sidecarctl rules restore`). Start a new rollout to try again.",
        'sidecarctl rollout abort --reason "accuracy regression in offline eval"',
        writes=True,
        sub=rollout,
    )
    p.set_defaults(handler=cmd_rollout_abort)
    p = c.add(
        "status",
        "show the rollout: plan, current stage, progress and gates",
        "Show the rollout: its phase, the plan as a ladder with the current stage marked, the\n"
        "stage's progress (time and samples against its minimums), its gates (PASS / FAIL /\n"
        "WAIT with value and threshold), the last health verdict and stable's baseline.\n"
        "Read-only. --watch polls every --interval seconds until Ctrl-C or until the rollout\n"
        "ends: exit 0 when it SUCCEEDED, 5 when it ended ROLLED_BACK or ABORTED (as\n"
        "`kubectl argo rollouts status` does), so CI can wait on it.",
        "sidecarctl rollout status --watch --interval 5",
        sub=rollout,
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="poll and print again until Ctrl-C or the rollout ends (json: one object per line)",
    )
    p.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_interval,
        default=2.0,
        help="seconds between polls with --watch (default: 2)",
    )
    p.set_defaults(handler=cmd_rollout_status)

    p = c.add(
        "drill",
        "rehearse an automatic rollback end to end (the state is restored after)",
        "Rehearse an automatic rollback: the health checker is shown a failing canary\n"
        "(synthetic observations; the model servers are not touched), then the real verdict and\n"
        "the real Rollback path run, and the routing state is restored as a new revision.\n"
        "Traffic: for a moment all traffic goes to stable (a canary without traffic first gets\n"
        "1%). Needs a canary variant and the kill switch off; every step is audited. Prints how\n"
        "long detection and the revert took and the verdict; `drill FAILED` means no automatic\n"
        "rollback happened.",
        'sidecarctl drill --reason "quarterly rollback rehearsal"',
    )
    p.add_argument(
        "--reason",
        required=True,
        type=_reason,
        help="why (required; recorded in the audit log with your identity)",
    )
    p.set_defaults(handler=cmd_drill)


# -- output --------------------------------------------------------------------------------


class Console:
    """stdout/stderr writer that redacts secrets and flushes (watch output goes to pipes)."""

    def __init__(self, json_mode: bool, secrets: Sequence[str], *, yaml_mode: bool = False) -> None:
        self.json_mode = json_mode or yaml_mode  # machine-readable output (json or yaml)
        self.yaml_mode = yaml_mode
        self.secrets = tuple(s for s in secrets if s)

    def out(self, text: str) -> None:
        print(_redact(text, self.secrets), file=sys.stdout, flush=True)

    def err(self, text: str) -> None:
        print(_redact(text, self.secrets), file=sys.stderr, flush=True)

    def data(self, value: Any, *, compact: bool = False) -> None:
        """One document: JSON (compact: one line, for streams), or YAML (compact: a
        `---`-separated document of a stream)."""
        if self.yaml_mode:
            text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
            self.out(f"---\n{text}" if compact else text)
        else:
            self.out(json.dumps(value, indent=None if compact else 2, ensure_ascii=False))

    def state(self, state: cpb.State, *, compact: bool = False) -> None:
        if self.json_mode:
            self.data(state_to_dict(state), compact=compact)
        else:
            self.out(render_state(state))

    def rollout(self, rollout: cpb.Rollout, *, compact: bool = False) -> None:
        if self.json_mode:
            self.data(rollout_to_dict(rollout), compact=compact)
        else:
            self.out(render_rollout(rollout, now=time.time()))


Handler = Callable[[ControlClient, argparse.Namespace, Console], int]


# -- commands ------------------------------------------------------------------------------


def cmd_status(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    if not args.watch:
        console.state(client.get_state())
        return EXIT_OK
    ask_rollout = True
    with client.watch_state() as watch:
        try:
            first = True
            for state, refreshed in _states_with_refresh(client, watch, args.interval):
                if not console.json_mode:
                    if not first:
                        console.out("")
                    when = f" (refreshed {_utc_now()})" if refreshed else ""
                    console.out(f"=== revision {state.revision}{when} ===")
                first = False
                console.state(state, compact=True)
                if ask_rollout and not console.json_mode:
                    ask_rollout = _show_active_rollout(client, console)
        except KeyboardInterrupt:
            watch.cancel()
    return EXIT_OK


_END = object()


def _states_with_refresh(
    client: ControlClient, watch: Any, interval: float
) -> Iterator[tuple[cpb.State, bool]]:
    """Each streamed state (False), and between changes a fresh read every `interval`
    seconds (True: the request counts move without a new revision). Ends with the stream;
    a stream error is raised here."""
    changes: queue.Queue[object] = queue.Queue(maxsize=64)

    def pump() -> None:
        try:
            for state in watch:
                changes.put(state)
        except BaseException as exc:  # handed to the main thread
            changes.put(exc)
        changes.put(_END)

    threading.Thread(target=pump, daemon=True).start()
    seen = False  # refreshes start after the stream's first state
    while True:
        try:
            item = changes.get(timeout=interval if seen else None)
        except queue.Empty:
            yield client.get_state(), True
            continue
        seen = True
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, cpb.State)
        yield item, False


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _show_active_rollout(client: ControlClient, console: Console) -> bool:
    """Print the rollout under the state when one is RUNNING or PAUSED; False when the
    sidecar has no rollout API (UNIMPLEMENTED), so the caller stops asking."""
    try:
        rollout = client.get_rollout()
    except ControlError as exc:
        if exc.code == "UNIMPLEMENTED":
            return False
        raise
    if rollout.phase in ACTIVE_PHASES:
        console.out("")
        console.rollout(rollout)
    return True


def _write(
    client: ControlClient,
    args: argparse.Namespace,
    console: Console,
    what: str,
    call: Callable[[], cpb.State],
) -> int:
    # The revision before, for the summary line: the one the server just checked, or a read.
    before = args.expect_revision or client.get_state().revision
    if getattr(args, "wait", False):
        client.fleet_wait = args.wait_timeout
    state = call()
    client.fleet_wait = None
    console.state(state)
    _summary(console, f"{what}: revision {before} -> {state.revision}")
    if state.fleet_not_applied:
        console.err(
            f"not applied within {args.wait_timeout:g}s by: {', '.join(state.fleet_not_applied)}"
        )
        return EXIT_FLEET_LAGGING
    if getattr(args, "wait", False) and any(w.startswith("fleet wait:") for w in state.warnings):
        console.err("stored, but whether every member applied it is unknown (see the warning)")
        return EXIT_FLEET_LAGGING
    return EXIT_OK


def cmd_models(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    answer = client.list_models()
    if console.json_mode:
        console.data(models_to_dict(answer))
    else:
        console.out(render_models(answer))
    return EXIT_OK


def cmd_fleet(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    answer = client.fleet_members()
    if console.json_mode:
        console.data(fleet_to_dict(answer))
    else:
        console.out(render_fleet(answer, time.time()))
    return EXIT_OK


def _summary(console: Console, summary: str) -> None:
    if console.json_mode:
        console.err(summary)  # stdout stays one JSON document
    else:
        console.out("")
        console.out(summary)


def _rollout_write(
    client: ControlClient,
    args: argparse.Namespace,
    console: Console,
    what: str,
    call: Callable[[], cpb.Rollout],
) -> int:
    """A rollout verb: print the rollout it returns, then "rollout WHAT: revision A -> B"."""
    before = args.expect_revision or client.get_state().revision
    rollout = call()
    console.rollout(rollout)
    _summary(console, f"rollout {what}: revision {before} -> {rollout.revision}")
    return EXIT_OK


def cmd_rollout_start(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    plan: cpb.RolloutPlan | None = None
    if args.plan is not None:
        try:
            plan = load_plan(args.plan)
        except PlanFileError as exc:
            console.err(f"sidecarctl rollout start: error: {exc}")
            return EXIT_USAGE
    what = "started" + (" with --force (any skipped steps are audited)" if args.force else "")
    return _rollout_write(
        client,
        args,
        console,
        what,
        lambda: client.start_rollout(
            reason=args.reason,
            plan=plan,
            force=args.force,
            expected_revision=args.expect_revision,
        ),
    )


def cmd_rollout_pause(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _rollout_write(
        client,
        args,
        console,
        "paused",
        lambda: client.pause_rollout(reason=args.reason, expected_revision=args.expect_revision),
    )


def cmd_rollout_resume(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _rollout_write(
        client,
        args,
        console,
        "resumed",
        lambda: client.resume_rollout(reason=args.reason, expected_revision=args.expect_revision),
    )


def cmd_rollout_abort(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _rollout_write(
        client,
        args,
        console,
        "aborted",
        lambda: client.abort_rollout(reason=args.reason, expected_revision=args.expect_revision),
    )


_CLEAR_SCREEN = "\x1b[H\x1b[2J"


def cmd_rollout_status(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    if not args.watch:
        console.rollout(client.get_rollout())
        return EXIT_OK
    # Poll until the rollout is no longer RUNNING/PAUSED (printing that final reading), or
    # Ctrl-C. A terminal is redrawn in place; a pipe gets one block (json: line) per poll.
    redraw = not console.json_mode and sys.stdout.isatty()
    interval: float = args.interval
    first = True
    try:
        while True:
            rollout = client.get_rollout()
            if not console.json_mode:
                now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                header = f"=== {now}  every {interval:g}s, Ctrl-C to stop ==="
                if redraw:
                    header = _CLEAR_SCREEN + header
                elif not first:
                    console.out("")
                console.out(header)
            first = False
            console.rollout(rollout, compact=True)
            if rollout.phase not in ACTIVE_PHASES:
                return EXIT_ROLLOUT_FAILED if rollout.phase in FAILED_PHASES else EXIT_OK
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_drill(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    report = client.run_drill(reason=args.reason)
    if console.json_mode:
        console.data(drill_to_dict(report))
    else:
        console.out(render_drill(report))
    return EXIT_OK


def cmd_weights(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    weights: dict[str, int] = {}
    for name, bp in args.weights:
        if name in weights:
            console.err(f"sidecarctl weights: error: variant {name!r} given twice")
            return EXIT_USAGE
        weights[name] = bp
    what = "weights " + ", ".join(f"{n}={bp}" for n, bp in weights.items())
    return _write(
        client,
        args,
        console,
        what,
        lambda: client.set_weights(
            weights, reason=args.reason, expected_revision=args.expect_revision
        ),
    )


def cmd_kill(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    on = args.position == "on"
    return _write(
        client,
        args,
        console,
        f"kill switch {'ON' if on else 'off'}",
        lambda: client.set_kill_switch(
            on, reason=args.reason, expected_revision=args.expect_revision
        ),
    )


def cmd_override_set(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _write(
        client,
        args,
        console,
        f"override {args.key} -> {args.variant}",
        lambda: client.set_user_override(
            args.key, args.variant, reason=args.reason, expected_revision=args.expect_revision
        ),
    )


def cmd_override_list(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    limit: int = args.limit
    overrides = []
    for override in client.iter_user_overrides(prefix=args.prefix):
        overrides.append(override)
        if limit and len(overrides) >= limit:
            break
    if console.json_mode:
        console.data([{"targeting_key": o.targeting_key, "variant": o.variant} for o in overrides])
    else:
        console.out(render_overrides(overrides))
    return EXIT_OK


def cmd_override_clear(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _write(
        client,
        args,
        console,
        f"override {args.key} cleared",
        lambda: client.clear_user_override(
            args.key, reason=args.reason, expected_revision=args.expect_revision
        ),
    )


def cmd_segment_set(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _write(
        client,
        args,
        console,
        f"segment {args.segment} -> {args.variant}",
        lambda: client.set_segment_rule(
            args.segment, args.variant, reason=args.reason, expected_revision=args.expect_revision
        ),
    )


def cmd_segment_clear(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _write(
        client,
        args,
        console,
        f"segment {args.segment} rule cleared",
        lambda: client.clear_segment_rule(
            args.segment, reason=args.reason, expected_revision=args.expect_revision
        ),
    )


def cmd_promote(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _write(
        client,
        args,
        console,
        "promoted",
        lambda: client.promote(reason=args.reason, expected_revision=args.expect_revision),
    )


def cmd_rollback(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _write(
        client,
        args,
        console,
        "rolled back",
        lambda: client.rollback(reason=args.reason, expected_revision=args.expect_revision),
    )


def cmd_rules_restore(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    return _write(
        client,
        args,
        console,
        "user overrides and segment rules restored",
        lambda: client.restore_rules(reason=args.reason, expected_revision=args.expect_revision),
    )


def cmd_audit(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    # The log is oldest first and paged; keep the last `limit` entries (0 = all).
    limit: int = args.limit
    entries: deque[cpb.AuditEntry] = deque(maxlen=limit or None)
    entries.extend(client.iter_audit())
    if console.json_mode:
        console.data([audit_entry_to_dict(e) for e in entries])
    else:
        console.out(render_audit(entries))
    return EXIT_OK


def cmd_shadow(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    report = client.shadow_report()
    if console.json_mode:
        console.data(shadow_to_dict(report))
    else:
        console.out(render_shadow(report))
    return EXIT_OK


def _html_destination(text: str) -> Path:
    """The --html path, checked before asking the sidecar: its folder must exist."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise _UsageError(f"--html {text}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise _UsageError(f"--html {text}: folder {path.parent} does not exist")
    return path


def _write_html(path: Path, page: str) -> None:
    """Write the page whole or not at all: a temporary file beside it, then rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cmd_report(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    as_json = console.json_mode or args.json
    destination: Path | None = None
    if args.html is not None:
        try:
            destination = _html_destination(args.html)
            require_matplotlib()  # the `report` extra; said before asking the sidecar
        except (_UsageError, ReportExtraMissing) as exc:
            console.err(f"sidecarctl report: error: {exc}")
            return EXIT_USAGE
    report = client.experiment_report(metrics=args.metrics, omit_history=args.no_history)
    if as_json:
        console.data(experiment_to_dict(report))
    else:
        console.out(render_experiment(report))
    if destination is None:
        return EXIT_OK
    try:
        _write_html(destination, render_html(report))
    except OSError as exc:
        console.err(f"sidecarctl report: error: cannot write --html {args.html}: {exc}")
        return EXIT_USAGE
    message = f"HTML report written to {destination}"
    if as_json:
        console.err(message)  # stdout stays one JSON document
    else:
        console.out("")
        console.out(message)
    return EXIT_OK


# -- --all: every live fleet member ---------------------------------------------------------

MAX_ALL_MEMBERS = 256
MAX_ALL_WORKERS = 8
MAX_ADDRESS = 255


def all_refusal(args: argparse.Namespace) -> str | None:
    """Why `--all` cannot run this command (None: it can): writes, streams, files."""
    if hasattr(args, "reason"):
        return (
            "--all runs read commands only and this one is a write: send it once, through "
            "any member (every member applies it from Redis), and add --wait to be answered "
            "once every live member has applied it"
        )
    if getattr(args, "watch", False):
        return "--all does not combine with --watch: watch one member (they serve one state)"
    if getattr(args, "html", None):
        return "--all does not combine with --html: write the page from one member"
    return None


def _connector(args: argparse.Namespace, token: str | None) -> Callable[[str], ControlClient]:
    """A client for one member's address, with the command line's credentials and TLS."""

    def connect(address: str) -> ControlClient:
        return ControlClient(
            address,
            token=token,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            timeout=args.timeout,
            model=_model(args),
        )

    return connect


class _Capture(Console):
    """A member's output, kept to be printed labelled: documents (json/yaml) and lines."""

    def __init__(self, parent: Console) -> None:
        super().__init__(parent.json_mode, parent.secrets, yaml_mode=parent.yaml_mode)
        self.documents: list[Any] = []
        self.lines: list[str] = []
        self.errors: list[str] = []

    def out(self, text: str) -> None:
        self.lines.append(_redact(text, self.secrets))

    def err(self, text: str) -> None:
        self.errors.append(_redact(text, self.secrets))

    def data(self, value: Any, *, compact: bool = False) -> None:
        self.documents.append(value)


@dataclass
class _MemberAnswer:
    member_id: str
    address: str
    code: int
    output: _Capture


def _usable_address(address: str) -> bool:
    return 0 < len(address) <= MAX_ADDRESS and address.isascii() and address.isprintable()


def _ask_member(
    handler: Handler,
    args: argparse.Namespace,
    parent: Console,
    connect: Callable[[str], ControlClient],
    member: tuple[str, str],
) -> _MemberAnswer:
    member_id, address = member
    capture = _Capture(parent)
    if not _usable_address(address):
        capture.err(
            "error: its heartbeat advertises no Control address (a sidecar older than "
            "state.redis.advertise_control?)"
        )
        return _MemberAnswer(member_id, address, EXIT_REFUSED, capture)
    try:
        with connect(address) as client:
            code = handler(client, args, capture)
    except ControlError as exc:
        capture.err(f"error: {exc.code}: {exc.message}")
        code = EXIT_UNREACHABLE if exc.unreachable else EXIT_REFUSED
    except (OSError, ValueError) as exc:
        capture.err(f"error: {exc}")
        code = EXIT_USAGE
    return _MemberAnswer(member_id, address, code, capture)


def fan_out(handler: Handler, connect: Callable[[str], ControlClient]) -> Handler:
    """`--all`: the handler run against every live member that the client's target lists
    (a sidecar not in a fleet: against that one), each answer printed labelled; members
    not live are named on stderr and skipped. Exit: the largest member exit code."""

    def run_all(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
        answer = client.fleet_members()
        if not answer.members:
            members = [(client.target, client.target)]
        else:
            members = [(m.member_id, m.control_address) for m in answer.members if m.live]
            stale = [m.member_id for m in answer.members if not m.live]
            if stale:
                console.err(f"skipped (not live): {', '.join(_clean_id(i) for i in stale)}")
        if not members:
            console.err(f"no live member in fleet {_clean_id(answer.fleet)}: nothing asked")
            return EXIT_REFUSED
        if len(members) > MAX_ALL_MEMBERS:
            console.err(f"more than {MAX_ALL_MEMBERS} live members: asking the first ones")
            members = members[:MAX_ALL_MEMBERS]
        workers = max(1, min(MAX_ALL_WORKERS, len(members)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(
                pool.map(lambda m: _ask_member(handler, args, console, connect, m), members)
            )
        _print_all(console, answer, answers)
        return max((a.code for a in answers), default=EXIT_OK)

    return run_all


def _clean_id(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _print_all(
    console: Console, fleet: cpb.ListFleetMembersResponse, answers: Sequence[_MemberAnswer]
) -> None:
    if console.json_mode:
        console.data(
            {
                "fleet": fleet.fleet or None,
                "members": [
                    {
                        "member_id": a.member_id,
                        "control_address": a.address,
                        "exit_code": a.code,
                        "answer": a.output.documents[0]
                        if len(a.output.documents) == 1
                        else (a.output.documents or None),
                        "errors": a.output.errors,
                    }
                    for a in answers
                ],
            }
        )
        return
    for i, a in enumerate(answers):
        if i:
            console.out("")
        label = f"{_clean_id(a.member_id)} ({_clean_id(a.address) or 'no control address'})"
        console.out(f"=== {label} ===")
        for line in a.output.lines:
            console.out(line)
        for line in a.output.errors:
            console.err(f"[{_clean_id(a.member_id)}] {line}")


# -- main ----------------------------------------------------------------------------------


def _argv_tokens(argv: Sequence[str]) -> tuple[str, ...]:
    """Values given to --token, found before parsing so parse errors can redact them."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--token" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--token="):
            found.append(arg.removeprefix("--token="))
    return tuple(found)


class _UsageError(Exception):
    pass


def _model(args: argparse.Namespace) -> str | None:
    """--model, else $SIDECARCTL_MODEL; None: the sidecar's primary model."""
    model: str | None = args.model
    if model is None:
        env = os.environ.get(MODEL_ENV, "").strip()
        try:
            model = _model_name(env) if env else None
        except argparse.ArgumentTypeError as exc:
            raise _UsageError(f"${MODEL_ENV}: {exc}") from None
    return model


def _resolve_token(args: argparse.Namespace) -> str | None:
    """--token, else --token-file, else $SIDECARCTL_TOKEN; None when none is set."""
    token: str | None = args.token
    if not token and args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError(f"cannot read --token-file {args.token_file}: {exc}") from None
        if not token:
            raise _UsageError(f"--token-file {args.token_file} is empty")
    if not token:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is not None and not (token.isascii() and token.isprintable()):
        raise _UsageError("the token must be printable ASCII (it is sent as gRPC metadata)")
    return token


_HINTS = {
    "UNAUTHENTICATED": "pass an operator or viewer token: --token-file PATH or $SIDECARCTL_TOKEN",
    "PERMISSION_DENIED": "this token's role may not do that (writes need an operator token)",
    "ABORTED": "the state changed since that revision: run `sidecarctl status` and retry "
    "with --expect-revision set to the current revision",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(secrets=_argv_tokens(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    if args.command == "completion":
        print(completion_script(parser, args.shell), end="")
        return EXIT_OK
    json_mode = args.output == "json"
    yaml_mode = args.output == "yaml"
    secrets = list(_argv_tokens(argv))
    try:
        token = _resolve_token(args)
        args.model = _model(args)
    except (_UsageError, argparse.ArgumentTypeError) as exc:
        Console(json_mode, secrets, yaml_mode=yaml_mode).err(f"sidecarctl: error: {exc}")
        return EXIT_USAGE
    console = Console(json_mode, [*secrets, token or ""], yaml_mode=yaml_mode)
    target: str = args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    handler: Handler = args.handler
    if args.all:
        refusal = all_refusal(args)
        if refusal:
            console.err(f"sidecarctl: error: {refusal}")
            return EXIT_USAGE
        handler = fan_out(handler, _connector(args, token))

    try:
        client = ControlClient(
            target,
            token=token,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            timeout=args.timeout,
            model=_model(args),
        )
    except (OSError, ValueError) as exc:
        console.err(f"sidecarctl: error: {exc}")
        return EXIT_USAGE

    try:
        with client:
            return handler(client, args, console)
    except ControlError as exc:
        console.err(f"error: {exc.code}: {exc.message}")
        if exc.unreachable:
            console.err(
                f"hint: could not reach the sidecar's control API at {target} "
                f"(set with --target or ${TARGET_ENV}); is the sidecar running there, and do "
                "its TLS settings match --ca-file/--cert-file/--key-file?"
            )
            return EXIT_UNREACHABLE
        if exc.code in _HINTS:
            console.err(f"hint: {_HINTS[exc.code]}")
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `sidecarctl status --watch | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
