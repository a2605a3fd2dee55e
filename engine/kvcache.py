"""The one place that rolls a transformers KV cache back to a shorter context.

`Cache.crop(n)` changed meaning across transformers 5.x: a positive n was the length to keep
(deprecated through 5.2x, an error by 5.24), while a negative n removes |n| tokens in every
version from 4.x to 5.24 (checked against the 5.17.0, 5.18.0 and 5.24.0 sources). Passing
a negative count is therefore the call that means the same everywhere; the length is
checked afterwards so that a future change of meaning fails loudly instead of silently
corrupting generation. A cache whose crop refuses negative counts is asked to remove a
positive count instead (the meaning some notes give 5.18+), and is checked the same way.
"""

from __future__ import annotations

from typing import Any


class CacheRollbackError(RuntimeError):
    """A cache did not end at the length asked for: a bug or an unknown transformers API."""


def cache_length(cache: Any) -> int:
    """Tokens held by a cache (its first layer's sequence length)."""
    return int(cache.get_seq_length())


def crop_cache(cache: Any, keep: int) -> None:
    """Drop everything after the first `keep` tokens of `cache` (in place)."""
    length = cache_length(cache)
    if keep < 0 or keep > length:
        raise ValueError(f"cannot keep {keep} tokens of a cache holding {length}")
    if keep == length:
        return
    try:
        cache.crop(keep - length)  # negative: "remove this many" under every known semantics
    except (ValueError, RuntimeError):
        if cache_length(cache) != length:
            raise
        cache.crop(length - keep)
    after = cache_length(cache)
    if after != keep:
        raise CacheRollbackError(
            f"{type(cache).__name__}.crop({keep - length}) left {after} tokens, expected {keep}"
        )
