"""Compare a shadow variant's outputs with the primary's.

Pure functions: no I/O, clock, randomness or concurrency. Every comparator returned
here takes ``(primary, shadow)`` output mappings and returns a :class:`Comparison`; it
never raises on the data it is given (missing or extra outputs, shape or dtype
mismatches, even values that are not arrays all become ``agreed=False`` with a short
detail).

Dtype *kinds* are compared, not exact dtypes: ``bool``; integer (signed and unsigned
are one kind, compared by value); floating point; complex; bytes/strings (object,
``S`` and ``U`` arrays are one kind, compared element by element with ``==``). So an
FP32 shadow may be compared with an FP64 primary, but an INT64 label never equals an
FP32 score.

NaN counts as equal to NaN in every comparator (a NaN in both answers at the same place
is agreement, not a difference).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUILTIN_COMPARATORS",
    "Comparator",
    "Comparison",
    "Outputs",
    "auto",
    "exact",
    "exact_outputs",
    "load_comparator",
    "tolerance",
    "top1",
]

Outputs = Mapping[str, npt.NDArray[Any]]
"""Output tensor name -> array (Open Inference Protocol datatypes mapped to numpy)."""


@dataclass(frozen=True)
class Comparison:
    """Result of comparing one shadow answer with the primary answer."""

    agreed: bool
    detail: str = ""
    """Empty when agreed; otherwise short and human-readable."""


Comparator = Callable[[Outputs, Outputs], Comparison]
"""``(primary, shadow) -> Comparison``; never raises on the data it is given."""

BUILTIN_COMPARATORS: Final = ("auto", "exact", "tolerance", "top1")

_AGREED: Final = Comparison(True, "")

_MAX_DETAIL: Final = 400  # characters of a Comparison.detail, whole
_MAX_VALUE: Final = 40  # characters of one rendered element inside a detail
_MAX_NAMES: Final = 5  # output names listed in a missing/extra detail

# An element-wise comparison of two arrays of the same shape and dtype kind:
# returns None when they agree, else the detail (without the output name prefix).
_ArrayCheck = Callable[[npt.NDArray[Any], npt.NDArray[Any]], str | None]


# --------------------------------------------------------------------------- helpers


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _kind(dtype: np.dtype[Any]) -> str:
    """The comparison kind of a dtype (see module docstring)."""
    k = dtype.kind
    if k in "iu":
        return "integer"
    if k in "OSU":
        return "bytes"
    return {"b": "bool", "f": "float", "c": "complex"}.get(k, f"other:{dtype.str}")


def _is_inexact(arr: npt.NDArray[Any]) -> bool:
    return arr.dtype.kind in "fc"


def _fmt_value(value: Any) -> str:
    """A short rendering of one element, precise enough to tell two values apart."""
    if isinstance(value, np.generic) and value.dtype.kind in "fc":
        text = str(value)  # shortest round-trip repr at the value's own precision
    else:
        if isinstance(value, np.generic):
            value = value.item()
        # Slice bytes/str before repr: an element may be huge.
        text = repr(value[: _MAX_VALUE + 1]) if isinstance(value, bytes | str) else str(value)
    return _truncate(text, _MAX_VALUE)


def _fmt_index(flat: int, shape: tuple[int, ...]) -> str:
    return str(tuple(int(i) for i in np.unravel_index(flat, shape)))


def _fmt_names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_NAMES])
    more = len(names) - _MAX_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _differ_detail(
    mismatch: npt.NDArray[np.bool_],
    primary: npt.NDArray[Any],
    shadow: npt.NDArray[Any],
    suffix: str = "",
) -> str | None:
    """Detail for a boolean mismatch mask (True = differs), or None when nothing differs."""
    count = int(np.count_nonzero(mismatch))
    if count == 0:
        return None
    first = int(np.flatnonzero(mismatch)[0])
    p_val = primary.reshape(-1)[first]
    s_val = shadow.reshape(-1)[first]
    return (
        f"{count} of {mismatch.size} elements differ{suffix}; "
        f"first at {_fmt_index(first, mismatch.shape)}: {_fmt_value(p_val)} vs {_fmt_value(s_val)}"
    )


def _equal_mask(primary: npt.NDArray[Any], shadow: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Element-wise exact equality of two same-shape, same-kind arrays (NaN == NaN)."""
    pk, sk = primary.dtype.kind, shadow.dtype.kind
    if _kind(primary.dtype) == "bytes" or pk not in "biufc":
        # Object / bytes / str arrays: compare element by element in Python, so odd
        # element types (or an element whose == is not a bool) cannot raise or mislead.
        flags = [
            _py_equal(p, s)
            for p, s in zip(primary.reshape(-1).tolist(), shadow.reshape(-1).tolist(), strict=True)
        ]
        return np.array(flags, dtype=np.bool_).reshape(primary.shape)
    if pk != sk and {pk, sk} == {"i", "u"}:
        # Mixed signed/unsigned: avoid a float64 promotion that loses precision.
        signed, unsigned = (primary, shadow) if pk == "i" else (shadow, primary)
        nonneg = signed >= 0
        as_unsigned = np.where(nonneg, signed, 0).astype(np.uint64)
        return np.asarray(nonneg & (as_unsigned == unsigned.astype(np.uint64)), dtype=np.bool_)
    with np.errstate(all="ignore"):
        equal = np.asarray(primary == shadow, dtype=np.bool_)
        if pk in "fc":
            equal |= np.isnan(primary) & np.isnan(shadow)
    return equal


def _py_equal(a: Any, b: Any) -> bool:
    try:
        if a is b:
            return True
        result = a == b
        if isinstance(result, bool | np.bool_):
            return bool(result)
        return False  # e.g. nested arrays: an ambiguous == is not agreement
    except Exception:
        return False


# ------------------------------------------------------------------ array checks


def _check_exact(primary: npt.NDArray[Any], shadow: npt.NDArray[Any]) -> str | None:
    return _differ_detail(~_equal_mask(primary, shadow), primary, shadow)


def _make_tolerance_check(rtol: float, atol: float) -> _ArrayCheck:
    suffix = f" beyond rtol={rtol:g}, atol={atol:g}"

    def check(primary: npt.NDArray[Any], shadow: npt.NDArray[Any]) -> str | None:
        if not (_is_inexact(primary) and _is_inexact(shadow)):
            return _check_exact(primary, shadow)
        with np.errstate(all="ignore"):
            # The primary answer is the reference: |shadow - primary| <= atol + rtol*|primary|.
            close = np.isclose(shadow, primary, rtol=rtol, atol=atol, equal_nan=True)
            mismatch = ~np.asarray(close, dtype=np.bool_)
            detail = _differ_detail(mismatch, primary, shadow, suffix)
            if detail is None:
                return None
            diff = np.abs(shadow[mismatch] - primary[mismatch])
            finite = diff[np.isfinite(diff)]
        if finite.size:
            detail += f"; max abs diff {float(finite.max()):.3g}"
        return detail

    return check


def _check_top1(primary: npt.NDArray[Any], shadow: npt.NDArray[Any]) -> str | None:
    scores = primary.dtype.kind in "iuf" and shadow.dtype.kind in "iuf"
    if not scores or primary.ndim < 2 or primary.shape[-1] < 2:
        # A label tensor, a 1-D vector, a single score per row or non-numeric data:
        # there is no class axis to take the argmax of, so compare exactly.
        return _check_exact(primary, shadow)
    p_top = np.argmax(primary, axis=-1)
    s_top = np.argmax(shadow, axis=-1)
    mismatch = p_top != s_top
    count = int(np.count_nonzero(mismatch))
    if count == 0:
        return None
    first = int(np.flatnonzero(mismatch)[0])
    return (
        f"argmax differs in {count} of {mismatch.size} rows; "
        f"first at {_fmt_index(first, mismatch.shape)}: "
        f"class {int(p_top.reshape(-1)[first])} vs {int(s_top.reshape(-1)[first])}"
    )


# ------------------------------------------------------------------ structure


def _as_array(value: Any) -> npt.NDArray[Any]:
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(value)


def _compare(
    primary: Outputs, shadow: Outputs, pick: Callable[[npt.NDArray[Any]], _ArrayCheck]
) -> Comparison:
    """Compare name sets, then per output shape, dtype kind and elements."""
    try:
        return _compare_unguarded(primary, shadow, pick)
    except Exception as exc:  # a last line of defence: comparators never raise
        return Comparison(
            False, _truncate(f"comparison error: {type(exc).__name__}: {exc}", _MAX_DETAIL)
        )


def _compare_unguarded(
    primary: Outputs, shadow: Outputs, pick: Callable[[npt.NDArray[Any]], _ArrayCheck]
) -> Comparison:
    problems: list[str] = []
    p_names = list(primary.keys())
    s_names = set(shadow.keys())
    missing = [n for n in p_names if n not in s_names]
    p_set = set(p_names)
    extra = sorted((n for n in s_names if n not in p_set), key=str)
    if missing:
        problems.append(f"missing in shadow: {_fmt_names(missing)}")
    if extra:
        problems.append(f"extra in shadow: {_fmt_names(extra)}")
    for name in p_names:
        if name not in s_names:
            continue
        try:
            p_arr = _as_array(primary[name])
            s_arr = _as_array(shadow[name])
        except Exception as exc:
            problems.append(f"{name}: not an array ({type(exc).__name__}: {exc})")
            continue
        if p_arr.shape != s_arr.shape:
            problems.append(f"{name}: shape mismatch: {p_arr.shape} vs {s_arr.shape}")
            continue
        p_kind, s_kind = _kind(p_arr.dtype), _kind(s_arr.dtype)
        if p_kind != s_kind:
            problems.append(f"{name}: dtype kind mismatch: {p_arr.dtype} vs {s_arr.dtype}")
            continue
        if p_arr.size == 0:
            continue
        detail = pick(p_arr)(p_arr, s_arr)
        if detail is not None:
            problems.append(f"{name}: {detail}")
    if not problems:
        return _AGREED
    return Comparison(False, _truncate("; ".join(problems), _MAX_DETAIL))


# ------------------------------------------------------------------ comparators


def _validate_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def exact() -> Comparator:
    """Same output names, shapes and dtype kinds, and every element equal."""

    def pick(_: npt.NDArray[Any]) -> _ArrayCheck:
        return _check_exact

    def compare_exact(primary: Outputs, shadow: Outputs) -> Comparison:
        return _compare(primary, shadow, pick)

    return compare_exact


def tolerance(rtol: float, atol: float) -> Comparator:
    """Floats close in the ``numpy.isclose`` sense (the primary is the reference,
    ``|shadow - primary| <= atol + rtol * |primary|``, NaN == NaN); other dtypes exact.

    Raises ValueError for a negative or non-finite ``rtol``/``atol`` (configuration time).
    """
    _validate_tolerances(rtol, atol)
    check = _make_tolerance_check(float(rtol), float(atol))

    def pick(_: npt.NDArray[Any]) -> _ArrayCheck:
        return check

    def compare_tolerance(primary: Outputs, shadow: Outputs) -> Comparison:
        return _compare(primary, shadow, pick)

    return compare_tolerance


def top1() -> Comparator:
    """Argmax along the last axis equal for every row of numeric outputs with at least
    two dimensions and two classes; any other output (labels, 1-D vectors, a single
    score per row, bytes) is compared exactly. Shapes must match, so both variants
    must score the same number of classes."""

    def pick(_: npt.NDArray[Any]) -> _ArrayCheck:
        return _check_top1

    def compare_top1(primary: Outputs, shadow: Outputs) -> Comparison:
        return _compare(primary, shadow, pick)

    return compare_top1


def auto(rtol: float, atol: float) -> Comparator:
    """Per output: floating point (and complex) -> :func:`tolerance`, anything else ->
    :func:`exact`. Raises ValueError for bad tolerances, like :func:`tolerance`."""
    _validate_tolerances(rtol, atol)
    close = _make_tolerance_check(float(rtol), float(atol))

    def pick(primary: npt.NDArray[Any]) -> _ArrayCheck:
        return close if _is_inexact(primary) else _check_exact

    def compare_auto(primary: Outputs, shadow: Outputs) -> Comparison:
        return _compare(primary, shadow, pick)

    return compare_auto


_EXACT: Final = exact()


def exact_outputs(primary: Outputs, shadow: Outputs) -> Comparison:
    """:func:`exact` as a plain function: an example of a pluggable comparator
    (``"sidecar.core.shadow.compare:exact_outputs"``)."""
    return _EXACT(primary, shadow)


# ------------------------------------------------------------------ plug-ins


def _read_only(outputs: Outputs) -> dict[str, Any]:
    """Read-only views, so a plug-in cannot modify the primary answer in place."""
    views: dict[str, Any] = {}
    for name, value in outputs.items():
        if isinstance(value, np.ndarray):
            view = value.view()
            view.flags.writeable = False
            views[name] = view
        else:
            views[name] = value
    return views


def _normalise(result: Any) -> Comparison:
    """Turn what a plug-in returned into a Comparison (never raises)."""
    if isinstance(result, Comparison):
        agreed, detail = bool(result.agreed), result.detail
    elif isinstance(result, bool | np.bool_):
        agreed, detail = bool(result), ""
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool | np.bool_):
        agreed, detail = bool(result[0]), result[1]
    else:
        return Comparison(
            False,
            f"comparator error: returned {type(result).__name__}; "
            "expected Comparison, bool or (bool, str)",
        )
    if agreed:
        return _AGREED
    text = detail if isinstance(detail, str) else repr(detail)
    return Comparison(False, _truncate(text or "comparator reported a disagreement", _MAX_DETAIL))


def _wrap_plugin(spec: str, func: Callable[..., Any]) -> Comparator:
    def compare_plugin(primary: Outputs, shadow: Outputs) -> Comparison:
        try:
            return _normalise(func(_read_only(primary), _read_only(shadow)))
        except Exception as exc:
            return Comparison(
                False, _truncate(f"comparator error: {type(exc).__name__}: {exc}", _MAX_DETAIL)
            )

    compare_plugin.__name__ = compare_plugin.__qualname__ = f"plugin[{spec}]"
    return compare_plugin


def load_comparator(spec: str, rtol: float, atol: float) -> Comparator:
    """The comparator named by ``spec``: ``auto``, ``exact``, ``tolerance``, ``top1`` or
    ``"package.module:function"``.

    A plug-in is any callable ``(primary, shadow)`` returning a :class:`Comparison`, a
    bool or ``(bool, detail)``; it is wrapped so the result is always a Comparison, a
    plug-in exception becomes ``agreed=False`` with detail ``"comparator error: ..."``,
    and it receives read-only views of the arrays.

    Raises ValueError naming the spec and the problem: unknown name, module not
    importable, attribute missing, not callable, or bad ``rtol``/``atol``.
    """
    if not isinstance(spec, str):
        raise ValueError(f"comparator spec must be a string, got {spec!r}")
    name = spec.strip()
    try:
        builtin = _builtin(name, rtol, atol)
    except ValueError as exc:
        raise ValueError(f"comparator {spec!r}: {exc}") from None
    if builtin is not None:
        return builtin
    return _wrap_plugin(name, _import_plugin(spec, name))


_EXPECTED = f"expected one of {', '.join(BUILTIN_COMPARATORS)} or 'package.module:function'"


def _builtin(name: str, rtol: float, atol: float) -> Comparator | None:
    """A built-in comparator by name; None when ``name`` is not one."""
    if name == "exact":
        return exact()
    if name == "top1":
        return top1()
    if name == "tolerance":
        return tolerance(rtol, atol)
    if name == "auto":
        return auto(rtol, atol)
    return None


def _import_plugin(spec: str, name: str) -> Any:
    """The callable a ``package.module:attr.path`` spec names (ValueError otherwise)."""
    if ":" not in name:
        raise ValueError(f"unknown comparator {spec!r}; {_EXPECTED}")
    module_name, _, attr_path = name.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not module_name or not attr_path:
        raise ValueError(f"comparator {spec!r}: malformed plug-in spec; {_EXPECTED}")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises on import
        raise ValueError(
            f"comparator {spec!r}: module {module_name!r} is not importable: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for i, part in enumerate(attr_path.split(".")):
        try:
            target = getattr(target, part)
        except AttributeError:
            where = ".".join([module_name, *attr_path.split(".")[:i]])
            raise ValueError(f"comparator {spec!r}: {where!r} has no attribute {part!r}") from None
    if not callable(target):
        raise ValueError(
            f"comparator {spec!r}: {attr_path!r} is not callable (it is a {type(target).__name__})"
        )
    return target
