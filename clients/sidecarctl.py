"""`sidecarctl`: the operator's command line for the sidecar's Control API.

Run `sidecarctl --help` and `sidecarctl COMMAND --help`. Exit codes: 0 done, 1 the sidecar
refused (message on stderr), 2 usage error, 3 the sidecar could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from clients.control import (
    ControlClient,
    ControlError,
    audit_entry_to_dict,
    render_audit,
    render_shadow,
    render_state,
    shadow_to_dict,
    state_to_dict,
)
from sidecar._proto.sidecar.v1 import control_pb2 as cpb

DEFAULT_TARGET = "127.0.0.1:8501"
TARGET_ENV = "SIDECARCTL_TARGET"
TOKEN_ENV = "SIDECARCTL_TOKEN"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

MAX_BP = 10_000

_Formatter = argparse.RawDescriptionHelpFormatter

DESCRIPTION = """\
Operate a running rollout sidecar through its Control API: inspect the routing state, move
traffic between the stable and canary model variants, pin users or segments to a variant,
flip the kill switch, promote or roll back, and read the audit log and shadow comparison.

Every write needs --reason (recorded in the audit log) and accepts --expect-revision N:
the write is refused (exit 1, ABORTED) if the state is no longer at revision N, so two
operators cannot overwrite each other's change unseen. Writes take effect from the next
request and print the new state plus "revision A -> B".

Credentials: --token, else --token-file, else $SIDECARCTL_TOKEN (sent as a bearer token;
never printed). Reads need a viewer token, writes an operator token. Prefer --token-file or
the environment variable: a --token value is visible to other users in the process list.

Exit codes: 0 done; 1 the sidecar refused the call (error: CODE: message on stderr);
2 usage error; 3 the sidecar could not be reached (UNAVAILABLE / DEADLINE_EXCEEDED)."""

EPILOG = """\
examples:
  export SIDECARCTL_TARGET=10.0.0.7:8501
  sidecarctl --token-file ~/.sidecar-token status
  sidecarctl status --watch --output json
  sidecarctl weights stable=95% canary=5% --reason "canary step 1" --expect-revision 7
  sidecarctl kill on --reason "canary error rate 4x stable"
  sidecarctl override set user-42 canary --reason "QA account sees the new model"
  sidecarctl promote --reason "canary healthy for 24h"
  sidecarctl audit --limit 20"""


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


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


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
        "-o",
        "--output",
        choices=("table", "json"),
        default=default("table"),
        help="table for people (default), json for scripts",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=default(5.0),
        help="deadline of each call (default: 5; status --watch has none)",
    )


def build_parser(secrets: Sequence[str] = ()) -> _Parser:
    """The argument parser; `secrets` are redacted from its error messages."""
    parser = _Parser(
        prog="sidecarctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.secrets = secrets
    _add_global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _add_global_options(common, suppress=True)
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

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str,
        help_text: str,
        description: str,
        example: str,
        *,
        writes: bool = False,
        sub: argparse._SubParsersAction[_Parser] = commands,
    ) -> _Parser:
        created = sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=f"example:\n  {example}",
            formatter_class=_Formatter,
            parents=[write, common] if writes else [common],
        )
        created.secrets = secrets
        return created

    p = command(
        "status",
        "show the routing state (variants, weights, kill switch, rules, revision)",
        "Show the routing state in force: each variant with its role, weight and requests\n"
        "served, the kill switch, user overrides, segment rules, shadow settings and the\n"
        "last change. Read-only.",
        "sidecarctl status --watch",
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="keep running and print the state again on every change until Ctrl-C "
        "(json: one object per line)",
    )
    p.set_defaults(handler=cmd_status)

    p = command(
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

    p = command(
        "kill",
        "turn the kill switch on (all traffic to stable) or off",
        "Kill switch on: from the next request every request goes to the stable variant,\n"
        "whatever the weights, overrides and segment rules say. Off: those apply again.",
        'sidecarctl kill on --reason "canary error rate 4x stable"',
        writes=True,
    )
    p.add_argument("position", choices=("on", "off"), help="on or off")
    p.set_defaults(handler=cmd_kill)

    p = command(
        "override",
        "pin one user (targeting key) to a variant, or remove the pin",
        "User overrides send every request with a given targeting key (x-user-id) to one\n"
        "variant, ahead of segment rules and the weighted split (but not the kill switch).",
        'sidecarctl override set user-42 canary --reason "QA account"',
    )
    override = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = command(
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
    p = command(
        "clear",
        "remove KEY's pin",
        "Remove the pin of targeting key KEY; its requests follow segment rules and weights.",
        'sidecarctl override clear user-42 --reason "QA done"',
        writes=True,
        sub=override,
    )
    p.add_argument("key", metavar="KEY", help="the targeting key (user id)")
    p.set_defaults(handler=cmd_override_clear)

    p = command(
        "segment",
        "route a whole segment to a variant, or remove the rule",
        "Segment rules send every request of a segment (x-segment) to one variant, after\n"
        "user overrides and ahead of the weighted split (but not the kill switch).",
        'sidecarctl segment set beta canary --reason "beta testers get the canary"',
    )
    segment = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = command(
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
    p = command(
        "clear",
        "remove SEGMENT's rule",
        "Remove the rule of SEGMENT; its requests follow user overrides and weights.",
        'sidecarctl segment clear beta --reason "beta over"',
        writes=True,
        sub=segment,
    )
    p.add_argument("segment", metavar="SEGMENT", help="a segment name")
    p.set_defaults(handler=cmd_segment_clear)

    p = command(
        "promote",
        "make the canary the new stable, with all traffic",
        "The canary becomes the stable variant and gets 100% of traffic. The old stable stays\n"
        "configured and warm as the canary at weight 0: `sidecarctl rollback` brings it back.",
        'sidecarctl promote --reason "canary healthy for 24h" --expect-revision 12',
        writes=True,
    )
    p.set_defaults(handler=cmd_promote)

    p = command(
        "rollback",
        "send all traffic to stable; or undo the last promotion",
        "All traffic goes to the stable variant at once. If the canary\n"
        "already has no traffic, this reverts the last promotion instead: the previous stable\n"
        "serves everything again.",
        'sidecarctl rollback --reason "p95 latency regression"',
        writes=True,
    )
    p.set_defaults(handler=cmd_rollback)

    p = command(
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

    p = command(
        "shadow",
        "show the shadow comparison report",
        "Show what the shadow comparison has recorded: requests sampled and sent to the\n"
        "shadow variant, copies dropped, agreement with the served answer, shadow errors,\n"
        "latency against the primary and the last disagreements. Read-only; shadow answers\n"
        "are never served.",
        "sidecarctl shadow --output json",
    )
    p.set_defaults(handler=cmd_shadow)
    return parser


# -- output --------------------------------------------------------------------------------


class Console:
    """stdout/stderr writer that redacts secrets and flushes (watch output goes to pipes)."""

    def __init__(self, json_mode: bool, secrets: Sequence[str]) -> None:
        self.json_mode = json_mode
        self.secrets = tuple(s for s in secrets if s)

    def out(self, text: str) -> None:
        print(_redact(text, self.secrets), file=sys.stdout, flush=True)

    def err(self, text: str) -> None:
        print(_redact(text, self.secrets), file=sys.stderr, flush=True)

    def data(self, value: Any, *, compact: bool = False) -> None:
        self.out(json.dumps(value, indent=None if compact else 2, ensure_ascii=False))

    def state(self, state: cpb.State, *, compact: bool = False) -> None:
        if self.json_mode:
            self.data(state_to_dict(state), compact=compact)
        else:
            self.out(render_state(state))


Handler = Callable[[ControlClient, argparse.Namespace, Console], int]


# -- commands ------------------------------------------------------------------------------


def cmd_status(client: ControlClient, args: argparse.Namespace, console: Console) -> int:
    if not args.watch:
        console.state(client.get_state())
        return EXIT_OK
    with client.watch_state() as watch:
        try:
            first = True
            for state in watch:
                if not console.json_mode:
                    if not first:
                        console.out("")
                    console.out(f"=== revision {state.revision} ===")
                first = False
                console.state(state, compact=True)
        except KeyboardInterrupt:
            watch.cancel()
    return EXIT_OK


def _write(
    client: ControlClient,
    args: argparse.Namespace,
    console: Console,
    what: str,
    call: Callable[[], cpb.State],
) -> int:
    # The revision before, for the summary line: the one the server just checked, or a read.
    before = args.expect_revision or client.get_state().revision
    state = call()
    console.state(state)
    summary = f"{what}: revision {before} -> {state.revision}"
    if console.json_mode:
        console.err(summary)  # stdout stays one JSON document
    else:
        console.out("")
        console.out(summary)
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

    json_mode = args.output == "json"
    secrets = list(_argv_tokens(argv))
    try:
        token = _resolve_token(args)
    except _UsageError as exc:
        Console(json_mode, secrets).err(f"sidecarctl: error: {exc}")
        return EXIT_USAGE
    console = Console(json_mode, [*secrets, token or ""])
    target: str = args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    handler: Handler = args.handler

    try:
        client = ControlClient(
            target,
            token=token,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            timeout=args.timeout,
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
