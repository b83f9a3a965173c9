"""Unit tests for the shadow comparators (sidecar.core.shadow.compare)."""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sidecar.core.shadow import (
    Comparator,
    Comparison,
    Outputs,
    auto,
    exact,
    load_comparator,
    tolerance,
    top1,
)

RTOL, ATOL = 1e-5, 1e-8

ALL: dict[str, Callable[[], Comparator]] = {
    "exact": exact,
    "tolerance": lambda: tolerance(RTOL, ATOL),
    "top1": top1,
    "auto": lambda: auto(RTOL, ATOL),
    "plugin": lambda: load_comparator("sidecar.core.shadow.compare:exact_outputs", RTOL, ATOL),
}


def outputs(**arrays: Any) -> dict[str, np.ndarray[Any, Any]]:
    return {name: np.asarray(value) for name, value in arrays.items()}


SCORES = outputs(probs=np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32))
MIXED = outputs(
    label=np.array([1, 0, 2], dtype=np.int64),
    scores=np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32),
    flag=np.array([True, False, True]),
    text=np.array([b"cat", b"dog", b""], dtype=object),
)


# ------------------------------------------------------------------ agreement


@pytest.mark.parametrize("name", sorted(ALL))
def test_identical_outputs_agree(name: str) -> None:
    """Every comparator agrees, with an empty detail, on identical outputs of every kind."""
    copy = {k: v.copy() for k, v in MIXED.items()}
    result = ALL[name]()(MIXED, copy)
    assert result == Comparison(True, "")


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_outputs_agree(name: str) -> None:
    """Two answers with no outputs at all agree (nothing differs)."""
    assert ALL[name]()({}, {}).agreed


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_arrays_of_same_shape_agree(name: str) -> None:
    """Zero-size arrays of the same shape and kind agree."""
    p = outputs(probs=np.zeros((0, 3), dtype=np.float32))
    assert ALL[name]()(p, outputs(probs=np.zeros((0, 3), dtype=np.float64))).agreed


def test_float_noise_within_tolerance_agrees_with_tolerance_and_auto_not_exact() -> None:
    """Noise below rtol/atol agrees for tolerance and auto but is a difference for exact."""
    noisy = {"probs": SCORES["probs"] * np.float32(1 + 1e-6)}
    assert tolerance(RTOL, ATOL)(SCORES, noisy).agreed
    assert auto(RTOL, ATOL)(SCORES, noisy).agreed
    result = exact()(SCORES, noisy)
    assert not result.agreed
    assert result.detail.startswith("probs: 6 of 6 elements differ; first at (0, 0): ")


def test_float_noise_beyond_tolerance_disagrees_with_numbers() -> None:
    """A difference beyond rtol/atol is reported with count, index, values and max diff."""
    shifted = {"probs": SCORES["probs"].copy()}
    shifted["probs"][1, 2] = 0.25
    result = tolerance(RTOL, ATOL)(SCORES, shifted)
    assert not result.agreed
    assert result.detail == (
        "probs: 1 of 6 elements differ beyond rtol=1e-05, atol=1e-08; "
        "first at (1, 2): 0.2 vs 0.25; max abs diff 0.05"
    )


def test_tolerance_uses_primary_as_reference() -> None:
    """|shadow - primary| <= atol + rtol * |primary| (numpy.isclose with b=primary)."""
    compare = tolerance(0.1, 0.0)
    assert not compare(outputs(y=[10.0]), outputs(y=[11.05])).agreed  # 1.05 > 0.1 * 10
    assert compare(outputs(y=[11.05]), outputs(y=[10.0])).agreed  # 1.05 <= 0.1 * 11.05


def test_tolerance_is_exact_for_non_floats() -> None:
    """Integer labels under tolerance/auto must be equal, however close."""
    p = outputs(label=np.array([1000000], dtype=np.int64))
    s = outputs(label=np.array([1000001], dtype=np.int64))
    for compare in (tolerance(1.0, 10.0), auto(1.0, 10.0)):
        result = compare(p, s)
        assert not result.agreed
        assert result.detail == "label: 1 of 1 elements differ; first at (0,): 1000000 vs 1000001"


def test_float_precisions_compare_by_value() -> None:
    """FP32 vs FP64 is the same kind; tolerance absorbs the FP32 rounding."""
    p = outputs(y=np.array([0.1, 0.2], dtype=np.float64))
    s = outputs(y=np.array([0.1, 0.2], dtype=np.float32))
    assert auto(RTOL, ATOL)(p, s).agreed
    assert not exact()(p, s).agreed


def test_signed_and_unsigned_integers_compare_by_value() -> None:
    """INT64 vs UINT64 compare by value without float64 precision loss."""
    big = 2**62 + 1
    p = outputs(y=np.array([-1, big, 3], dtype=np.int64))
    s = outputs(y=np.array([2**64 - 1, big, 3], dtype=np.uint64))
    result = exact()(p, s)
    assert result.detail == "y: 1 of 3 elements differ; first at (0,): -1 vs 18446744073709551615"
    s2 = outputs(y=np.array([0, big, 3], dtype=np.uint64))
    p2 = outputs(y=np.array([0, big, 3], dtype=np.int64))
    assert exact()(p2, s2).agreed
    s3 = outputs(y=np.array([0, big + 1, 3], dtype=np.uint64))
    assert not exact()(p2, s3).agreed


# ------------------------------------------------------------------ top1


def test_top1_agrees_when_scores_differ_but_argmax_is_equal() -> None:
    """top1 ignores score values as long as every row's argmax is the same."""
    other = outputs(probs=np.array([[0.0, 0.4, 0.3], [0.9, 0.05, 0.05]], dtype=np.float32))
    assert top1()(SCORES, other).agreed
    assert not tolerance(RTOL, ATOL)(SCORES, other).agreed


def test_top1_disagrees_when_argmax_differs() -> None:
    """top1 reports how many rows changed class and the first one."""
    other = outputs(probs=np.array([[0.1, 0.7, 0.2], [0.1, 0.3, 0.6]], dtype=np.float32))
    result = top1()(SCORES, other)
    assert not result.agreed
    assert result.detail == "probs: argmax differs in 1 of 2 rows; first at (1,): class 0 vs 2"


def test_top1_on_batched_3d_scores_reports_row_index() -> None:
    """For (batch, seq, classes) scores the row index has two coordinates."""
    p = np.zeros((2, 3, 4), dtype=np.float32)
    p[..., 1] = 1.0
    s = p.copy()
    s[1, 2] = [0, 0, 0, 1]
    result = top1()(outputs(t=p), outputs(t=s))
    assert result.detail == "t: argmax differs in 1 of 6 rows; first at (1, 2): class 1 vs 3"


def test_top1_falls_back_to_exact_for_label_tensors() -> None:
    """1-D tensors, single-score rows and bytes are compared exactly under top1."""
    labels = outputs(label=np.array([2, 0, 1], dtype=np.int64))
    assert top1()(labels, outputs(label=np.array([2, 0, 1]))).agreed
    result = top1()(labels, outputs(label=np.array([2, 1, 1])))
    assert result.detail == "label: 1 of 3 elements differ; first at (1,): 0 vs 1"
    single = outputs(p=np.array([[0.2], [0.9]]))
    assert not top1()(single, outputs(p=np.array([[0.2], [0.8]]))).agreed
    text = outputs(t=np.array([b"a"], dtype=object))
    assert not top1()(text, outputs(t=np.array([b"b"], dtype=object))).agreed


def test_top1_requires_same_number_of_classes() -> None:
    """Scores over a different number of classes are a shape mismatch, not an argmax."""
    other = outputs(probs=np.zeros((2, 4), dtype=np.float32))
    result = top1()(SCORES, other)
    assert result == Comparison(False, "probs: shape mismatch: (2, 3) vs (2, 4)")


# ------------------------------------------------------------------ disagreement details


def test_int64_labels_differ_detail_names_output_count_and_first_index() -> None:
    """The detail names the output, how many elements differ and the first difference."""
    p = outputs(predict=np.array([1, 0, 2, 1], dtype=np.int64))
    s = outputs(predict=np.array([1, 2, 0, 0], dtype=np.int64))
    for name in ("exact", "tolerance", "top1", "auto"):
        result = ALL[name]()(p, s)
        assert result == Comparison(False, "predict: 3 of 4 elements differ; first at (1,): 0 vs 2")


@pytest.mark.parametrize("name", sorted(ALL))
def test_missing_output_disagrees(name: str) -> None:
    """An output the primary has and the shadow lacks is named in the detail."""
    shadow = {k: v for k, v in MIXED.items() if k != "scores"}
    result = ALL[name]()(MIXED, shadow)
    assert result == Comparison(False, "missing in shadow: 'scores'")


@pytest.mark.parametrize("name", sorted(ALL))
def test_extra_output_disagrees(name: str) -> None:
    """An output only the shadow has is named in the detail."""
    shadow = {**MIXED, "debug": np.array([1])}
    result = ALL[name]()(MIXED, shadow)
    assert result == Comparison(False, "extra in shadow: 'debug'")


@pytest.mark.parametrize("name", sorted(ALL))
def test_shape_mismatch_disagrees(name: str) -> None:
    """Different shapes are reported with both shapes, never broadcast."""
    shadow = {**MIXED, "label": np.array([[1, 0, 2]], dtype=np.int64)}
    result = ALL[name]()(MIXED, shadow)
    assert result == Comparison(False, "label: shape mismatch: (3,) vs (1, 3)")


@pytest.mark.parametrize("name", sorted(ALL))
def test_dtype_kind_mismatch_disagrees(name: str) -> None:
    """An INT64 label vs an FP32 label is a kind mismatch even if the values are equal."""
    shadow = {**MIXED, "label": np.array([1.0, 0.0, 2.0], dtype=np.float32)}
    result = ALL[name]()(MIXED, shadow)
    assert result == Comparison(False, "label: dtype kind mismatch: int64 vs float32")


def test_several_problems_are_all_reported() -> None:
    """Missing, extra and per-output problems are joined in one detail."""
    p = outputs(a=[1, 2], b=[1.0], c=[True])
    s = outputs(a=[1, 3], b=[1.0, 2.0], d=[0])
    assert exact()(p, s).detail == (
        "missing in shadow: 'c'; extra in shadow: 'd'; "
        "a: 1 of 2 elements differ; first at (1,): 2 vs 3; b: shape mismatch: (1,) vs (2,)"
    )


def test_detail_is_bounded() -> None:
    """Even with hundreds of differing outputs the detail stays short."""
    p = {f"out{i}": np.array([i]) for i in range(500)}
    s = {f"out{i}": np.array([i + 1]) for i in range(500)}
    result = exact()(p, s)
    assert not result.agreed
    assert len(result.detail) <= 400
    assert result.detail.endswith("…")


def test_many_missing_names_are_summarised() -> None:
    """A long list of missing outputs is cut to a few names and a count."""
    p = {f"o{i}": np.array([i]) for i in range(8)}
    assert exact()(p, {}).detail == "missing in shadow: 'o0', 'o1', 'o2', 'o3', 'o4' and 3 more"


# ------------------------------------------------------------------ bytes, bools, NaN


def test_bytes_arrays_compare_element_by_element() -> None:
    """BYTES (object arrays of bytes) agree when equal and report the first difference."""
    p = outputs(text=np.array([b"cat", b"dog"], dtype=object))
    assert exact()(p, outputs(text=np.array([b"cat", b"dog"], dtype=object))).agreed
    assert auto(RTOL, ATOL)(p, outputs(text=np.array([b"cat", b"dog"], dtype="S3"))).agreed
    result = auto(RTOL, ATOL)(p, outputs(text=np.array([b"cat", b"cow"], dtype=object)))
    assert result == Comparison(
        False, "text: 1 of 2 elements differ; first at (1,): b'dog' vs b'cow'"
    )


def test_bytes_vs_str_and_huge_elements_are_reported_briefly() -> None:
    """bytes never equal str, and a huge differing element is cut in the detail."""
    p = outputs(t=np.array([b"a"], dtype=object))
    assert not exact()(p, outputs(t=np.array(["a"], dtype=object))).agreed
    big = outputs(t=np.array([b"x" * 1_000_000], dtype=object))
    result = exact()(big, outputs(t=np.array([b"y" * 1_000_000], dtype=object)))
    assert not result.agreed
    assert len(result.detail) < 150


def test_object_arrays_with_odd_elements_never_raise() -> None:
    """Elements whose == is ambiguous or raises count as differences, not crashes."""

    class Boom:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

        __hash__ = object.__hash__

    nested = np.empty(1, dtype=object)
    nested[0] = np.array([1, 2])
    nested2 = np.empty(1, dtype=object)
    nested2[0] = np.array([1, 2])
    assert not exact()(outputs(x=nested), outputs(x=nested2)).agreed
    boom_p, boom_s = np.empty(1, dtype=object), np.empty(1, dtype=object)
    boom_p[0], boom_s[0] = Boom(), Boom()
    assert not exact()({"x": boom_p}, {"x": boom_s}).agreed


def test_bool_outputs_compare_exactly() -> None:
    """BOOL tensors agree only when equal, under every comparator."""
    p = outputs(flag=np.array([True, False]))
    s = outputs(flag=np.array([True, True]))
    for name in ("exact", "tolerance", "top1", "auto"):
        assert ALL[name]()(p, s).detail == (
            "flag: 1 of 2 elements differ; first at (1,): False vs True"
        )


def test_nan_equals_nan_in_every_comparator() -> None:
    """NaN in both answers at the same place agrees; NaN against a number differs."""
    p = outputs(y=np.array([[np.nan, 1.0], [np.inf, -np.inf]]))
    same = outputs(y=np.array([[np.nan, 1.0], [np.inf, -np.inf]]))
    for name in ("exact", "tolerance", "top1", "auto"):
        assert ALL[name]()(p, same).agreed, name
    other = outputs(y=np.array([[0.0, 1.0], [np.inf, -np.inf]]))
    result = tolerance(RTOL, ATOL)(p, other)
    assert not result.agreed
    assert result.detail.startswith("y: 1 of 4 elements differ beyond")
    assert "first at (0, 0): nan vs 0.0" in result.detail
    assert not exact()(p, other).agreed


def test_scalar_outputs_compare() -> None:
    """0-d outputs compare and report an empty index."""
    result = exact()(outputs(n=np.int32(3)), outputs(n=np.int32(4)))
    assert result == Comparison(False, "n: 1 of 1 elements differ; first at (): 3 vs 4")


def test_non_array_values_and_non_mappings_never_raise() -> None:
    """Lists are accepted as arrays; garbage inputs give agreed=False, not an exception."""
    assert exact()({"a": [1, 2]}, {"a": np.array([1, 2])}).agreed  # type: ignore[dict-item]
    for compare in (exact(), tolerance(RTOL, ATOL), top1(), auto(RTOL, ATOL)):
        result = compare(None, {})  # type: ignore[arg-type]
        assert not result.agreed
        assert result.detail.startswith("comparison error: ")


# ------------------------------------------------------------------ properties

_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.byte_string_dtypes(max_len=4),
    hnp.unicode_string_dtypes(max_len=4),
)
_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
_arrays = _dtypes.flatmap(lambda dt: hnp.arrays(dt, _shapes))


@settings(max_examples=150, deadline=None)
@given(_arrays)
def test_property_every_comparator_agrees_with_itself(arr: np.ndarray[Any, Any]) -> None:
    """For any array (NaN, inf, empty, 0-d, bytes included) a copy of itself agrees."""
    for factory in ALL.values():
        assert factory()({"x": arr}, {"x": arr.copy()}).agreed


@settings(max_examples=150, deadline=None)
@given(_arrays, _arrays, st.booleans())
def test_property_comparators_never_raise(
    a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], rename: bool
) -> None:
    """Any pair of arrays gives a Comparison; a disagreement always has a detail."""
    shadow = {"y" if rename else "x": b}
    for factory in ALL.values():
        result = factory()({"x": a}, shadow)
        assert isinstance(result, Comparison)
        assert result.agreed == (result.detail == "")


# ------------------------------------------------------------------ load_comparator


@pytest.mark.parametrize("spec", ["exact", "tolerance", "top1", "auto", "  auto  "])
def test_load_builtin_comparators(spec: str) -> None:
    """Built-in names load and behave like their factories."""
    compare = load_comparator(spec, RTOL, ATOL)
    assert compare(MIXED, dict(MIXED)).agreed
    assert not compare(MIXED, {}).agreed


def _plugin_module(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register an in-memory module of plug-ins; returns its name."""
    module = types.ModuleType("shadow_test_plugins")

    def returns_comparison(primary: Outputs, shadow: Outputs) -> Comparison:
        return Comparison(primary.keys() == shadow.keys(), "names differ")

    def returns_bool(primary: Outputs, shadow: Outputs) -> bool:
        return bool(np.array_equal(primary["y"], shadow["y"]))

    def returns_numpy_bool(primary: Outputs, shadow: Outputs) -> np.bool_:
        return np.array_equal(primary["y"], shadow["y"])  # type: ignore[return-value]

    def returns_tuple(primary: Outputs, shadow: Outputs) -> tuple[bool, str]:
        equal = bool(np.array_equal(primary["y"], shadow["y"]))
        return equal, "" if equal else "y changed"

    def raises(primary: Outputs, shadow: Outputs) -> Comparison:
        raise KeyError("y")

    def returns_garbage(primary: Outputs, shadow: Outputs) -> object:
        return {"agreed": True}

    def mutates(primary: Outputs, shadow: Outputs) -> bool:
        primary["y"][0] = 99
        return True

    class Namespace:
        @staticmethod
        def nested(primary: Outputs, shadow: Outputs) -> bool:
            return True

    for fn in (returns_comparison, returns_bool, returns_numpy_bool, returns_tuple, raises,
               returns_garbage, mutates):  # fmt: skip
        setattr(module, fn.__name__, fn)
    module.Namespace = Namespace  # type: ignore[attr-defined]
    module.NOT_CALLABLE = 42  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


Y1 = outputs(y=[1, 2])
Y2 = outputs(y=[1, 3])


def test_plugin_returning_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in returning a Comparison is used as is (detail dropped when agreed)."""
    compare = load_comparator(f"{_plugin_module(monkeypatch)}:returns_comparison", RTOL, ATOL)
    assert compare(Y1, Y2) == Comparison(True, "")
    assert compare(Y1, {}) == Comparison(False, "names differ")


def test_plugin_returning_bool(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in returning bool (Python or numpy) is wrapped into a Comparison."""
    module = _plugin_module(monkeypatch)
    for fn in ("returns_bool", "returns_numpy_bool"):
        compare = load_comparator(f"{module}:{fn}", RTOL, ATOL)
        assert compare(Y1, Y1) == Comparison(True, "")
        assert compare(Y1, Y2) == Comparison(False, "comparator reported a disagreement")


def test_plugin_returning_tuple(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in returning (bool, detail) is wrapped into a Comparison."""
    compare = load_comparator(f"{_plugin_module(monkeypatch)}:returns_tuple", RTOL, ATOL)
    assert compare(Y1, Y1) == Comparison(True, "")
    assert compare(Y1, Y2) == Comparison(False, "y changed")


def test_plugin_raising_becomes_a_disagreement(monkeypatch: pytest.MonkeyPatch) -> None:
    """A buggy plug-in cannot crash the caller: its exception is a 'comparator error'."""
    compare = load_comparator(f"{_plugin_module(monkeypatch)}:raises", RTOL, ATOL)
    assert compare(Y1, Y1) == Comparison(False, "comparator error: KeyError: 'y'")


def test_plugin_returning_garbage_becomes_a_disagreement(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected return type is a 'comparator error' naming the type."""
    compare = load_comparator(f"{_plugin_module(monkeypatch)}:returns_garbage", RTOL, ATOL)
    result = compare(Y1, Y1)
    assert not result.agreed
    assert result.detail.startswith("comparator error: returned dict")


def test_plugin_cannot_modify_the_primary_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plug-ins receive read-only views; writing into them fails and is reported."""
    compare = load_comparator(f"{_plugin_module(monkeypatch)}:mutates", RTOL, ATOL)
    primary = outputs(y=np.array([1, 2]))
    result = compare(primary, Y1)
    assert not result.agreed
    assert result.detail.startswith("comparator error: ValueError:")
    assert primary["y"].tolist() == [1, 2]
    assert primary["y"].flags.writeable


def test_plugin_attribute_path_may_be_dotted(monkeypatch: pytest.MonkeyPatch) -> None:
    """'module:Class.method' resolves nested attributes."""
    compare = load_comparator(f"{_plugin_module(monkeypatch)}:Namespace.nested", RTOL, ATOL)
    assert compare(Y1, Y2).agreed


def test_plugin_loaded_from_a_real_module_on_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comparator in a module file on sys.path is imported by 'module:function'."""
    (tmp_path / "my_shadow_plugin.py").write_text(
        textwrap.dedent(
            """
            def same_keys(primary, shadow):
                return sorted(primary) == sorted(shadow), "output names differ"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_shadow_plugin", raising=False)
    compare = load_comparator("my_shadow_plugin:same_keys", RTOL, ATOL)
    assert compare(Y1, Y2).agreed
    assert compare(Y1, {}) == Comparison(False, "output names differ")


def test_exact_outputs_is_loadable_as_a_plugin() -> None:
    """The shipped example plug-in loads by its module path and compares exactly."""
    compare = load_comparator("sidecar.core.shadow.compare:exact_outputs", RTOL, ATOL)
    assert compare(Y1, Y1).agreed
    assert compare(Y1, Y2) == Comparison(False, "y: 1 of 2 elements differ; first at (1,): 2 vs 3")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("nearest", "unknown comparator"),
        ("", "unknown comparator"),
        ("Exact", "unknown comparator"),
        (":fn", "malformed"),
        ("shadow_test_plugins:", "malformed"),
        ("no_such_module_for_shadow_tests:fn", "is not importable"),
        ("shadow_test_plugins:missing", "has no attribute 'missing'"),
        ("shadow_test_plugins:Namespace.missing", "has no attribute 'missing'"),
        ("shadow_test_plugins:NOT_CALLABLE", "is not callable"),
    ],
)
def test_bad_specs_raise_value_error_naming_the_spec(
    spec: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad specs fail at configuration time with the spec and the problem in the message."""
    _plugin_module(monkeypatch)
    with pytest.raises(ValueError) as info:
        load_comparator(spec, RTOL, ATOL)
    assert repr(spec) in str(info.value)
    assert problem in str(info.value)


def test_module_failing_on_import_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plug-in module that raises while importing is a ValueError, not a crash."""
    (tmp_path / "broken_shadow_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_shadow_plugin", raising=False)
    with pytest.raises(ValueError, match=r"is not importable: RuntimeError: boom"):
        load_comparator("broken_shadow_plugin:f", RTOL, ATOL)


@pytest.mark.parametrize("spec", ["tolerance", "auto"])
@pytest.mark.parametrize(("rtol", "atol"), [(-1.0, 0.0), (0.0, float("nan")), (float("inf"), 0)])
def test_bad_tolerances_raise_value_error(spec: str, rtol: float, atol: float) -> None:
    """Negative or non-finite rtol/atol are configuration errors."""
    with pytest.raises(ValueError, match=repr(spec)):
        load_comparator(spec, rtol, atol)


def test_non_string_spec_raises_value_error() -> None:
    """A spec that is not a string is a ValueError too."""
    with pytest.raises(ValueError, match="must be a string"):
        load_comparator(None, RTOL, ATOL)  # type: ignore[arg-type]
