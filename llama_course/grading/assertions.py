"""Assertions the graded tests share: messages tell the student what differs, never how the reference works."""

import math
from typing import Any

import numpy as np
import torch


def assert_tensor_close(
    actual: Any,
    expected: torch.Tensor,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    check_dtype: bool = True,
    what: str = "your result",
) -> None:
    """`actual` is a tensor of `expected`'s shape (and dtype) whose values agree within atol + rtol * |expected|.

    Every message starts with what was expected and what came back; `what` (which may describe the inputs at
    length) follows, so that a clipped message still shows the numbers.
    """
    if type(actual) not in (torch.Tensor, torch.nn.Parameter):  # a subclass could fake its own comparisons
        raise AssertionError(f"expected a torch.Tensor, got {type(actual).__name__}: {what}")
    if actual.shape != expected.shape:
        raise AssertionError(f"expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}: {what}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"expected dtype {expected.dtype}, got {actual.dtype}: {what}")
    actual64, expected64 = actual.detach().double(), expected.detach().double()
    if torch.isnan(actual64).any() and not torch.isnan(expected64).any():
        index = tuple(int(i) for i in (torch.isnan(actual64) & ~torch.isnan(expected64)).nonzero()[0])
        raise AssertionError(f"expected {expected64[index].item():.6g}, got nan at index {index}: {what}")
    error = (actual64 - expected64).abs()
    allowed = atol + rtol * expected64.abs()
    if not (error <= allowed).all():
        worst = tuple(int(i) for i in torch.unravel_index((error - allowed).flatten().argmax(), error.shape))
        raise AssertionError(
            f"expected {expected64[worst].item():.6g}, got {actual64[worst].item():.6g} at index {worst} "
            f"(largest error {error.max().item():.3g}; tolerance atol={atol:g}, rtol={rtol:g}): {what}"
        )


def assert_equal(actual: Any, expected: Any, what: str = "your result") -> None:
    """Exact equality of plain values (ints, strings, lists), expected and got first on failure. `actual` is first
    turned into plain Python values (tensors and NumPy values by `tolist()`), so that no `__eq__` of the
    student's decides the comparison."""
    plain = _plain(actual, expected, what)
    if plain != expected:
        raise AssertionError(f"expected {_short(expected)}, got {_short(plain)}: {what}")


def assert_number_close(actual: Any, expected: float, what: str, tolerance: float = 1e-12) -> None:
    """`actual` is an int or a float (not a bool) within `tolerance`, relative or absolute, of `expected`."""
    if not isinstance(actual, int | float) or isinstance(actual, bool):
        raise AssertionError(f"expected the number {expected!r}, got a {type(actual).__name__}: {what}")
    if not math.isclose(actual, expected, rel_tol=tolerance, abs_tol=tolerance):
        raise AssertionError(f"expected {expected!r}, got {actual!r}: {what}")


PLAIN_TYPES = (bool, int, float, complex, str, bytes, type(None))


def _plain(value: Any, expected: Any, what: str) -> Any:
    if type(value) in PLAIN_TYPES:
        return value
    if type(value) in (list, tuple):
        return type(value)(_plain(item, expected, what) for item in value)
    if type(value) is dict:
        return {_plain(key, expected, what): _plain(item, expected, what) for key, item in value.items()}
    if type(value) in (torch.Tensor, torch.nn.Parameter, np.ndarray) or (
            isinstance(value, np.generic) and type(value).__module__ == "numpy"):
        return value.tolist()
    raise AssertionError(f"expected {_short(expected)}, got a {type(value).__name__} (return plain Python values, "
                         f"tensors or NumPy arrays): {what}")


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def raises_value_error(function: Any, *args: Any) -> bool:
    """Whether `function(*args)` raises a ValueError (the package's error for bad input)."""
    try:
        function(*args)
    except ValueError:
        return True
    return False
