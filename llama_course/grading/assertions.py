"""Assertions the graded tests share: messages tell the student what differs, never how the reference works."""

from typing import Any

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
    """`actual` is a tensor of `expected`'s shape (and dtype) whose values agree within atol + rtol * |expected|."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what} should be a torch.Tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"{what} has dtype {actual.dtype}, expected {expected.dtype}")
    actual64, expected64 = actual.detach().double(), expected.detach().double()
    if torch.isnan(actual64).any() and not torch.isnan(expected64).any():
        raise AssertionError(f"{what} contains NaN")
    error = (actual64 - expected64).abs()
    allowed = atol + rtol * expected64.abs()
    if not (error <= allowed).all():
        worst = int((error - allowed).flatten().argmax())
        raise AssertionError(
            f"{what} differs from the expected values: largest error {error.max().item():.3g} "
            f"(at flat index {worst}: got {actual64.flatten()[worst].item():.6g}, "
            f"expected {expected64.flatten()[worst].item():.6g}; tolerance atol={atol:g}, rtol={rtol:g})"
        )


def assert_equal(actual: Any, expected: Any, what: str = "your result") -> None:
    """Exact equality of plain values (ints, strings, lists), with both shown on failure."""
    if actual != expected:
        raise AssertionError(f"{what} is {_short(actual)}, expected {_short(expected)}")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def raises_value_error(function: Any, *args: Any) -> bool:
    """Whether `function(*args)` raises a ValueError (the package's error for bad input)."""
    try:
        function(*args)
    except ValueError:
        return True
    return False
