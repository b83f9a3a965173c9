"""Explicit versions: which served variant a request naming a `model_version` asks for.

Versions are matched against the variants' configured `model_version`
(`variants.<name>.model_version`). The variants that can serve are the flag's stable and
canary and every variant with a weight; the shadow never serves. Several served variants
may share a version (a canary of the same model version on another server, as Triton's
`1` / `1`): a request for it is routed as any other, and answered by one of them.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.core.routing.model import Flag


def served_variants(flag: Flag, shadow: str | None = None) -> tuple[str, ...]:
    """The variants a request can be served by: stable, canary, then weighted ones (the
    shadow only if it is the stable)."""
    names = [flag.stable]
    if flag.canary is not None:
        names.append(flag.canary)
    names += sorted(v for v, w in flag.weights.items() if w > 0 and v not in names)
    return tuple(v for v in names if v == flag.stable or v != shadow)


def variants_for_version(
    flag: Flag, versions: Mapping[str, str], version: str, shadow: str | None = None
) -> tuple[str, ...]:
    """The served variants whose model version is `version`, stable first; empty when none
    is (an empty `version` names no variant)."""
    if not version:
        return ()
    return tuple(n for n in served_variants(flag, shadow) if versions.get(n) == version)
