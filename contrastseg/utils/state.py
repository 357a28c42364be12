"""Comparing state dicts, so that a mismatch is reported key by key instead of by torch."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def state_dict_mismatches(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor], limit: int = 8
) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``given`` against ``expected``.

    Args:
        expected: the state dict of the module that would load ``given``.
        given: the state dict read from a file.
        limit: keys listed per kind (the count is always given).

    Returns:
        One human-readable entry per kind of mismatch; empty when ``given`` loads strictly.
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:limit])}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:limit])}")
    if wrong:
        parts.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong[:limit])}")
    return parts
