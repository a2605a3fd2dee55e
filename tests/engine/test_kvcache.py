"""crop_cache rolls caches back under every transformers crop semantics."""

from __future__ import annotations

import pytest
import torch

from engine.kvcache import CacheRollbackError, cache_length, crop_cache


class LegacyCropCache:
    """transformers <= 5.17: crop(n > 0) keeps n tokens, crop(n < 0) removes |n|."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.calls: list[int] = []

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, n: int) -> None:
        self.calls.append(n)
        if n > 0:
            self.length = min(self.length, n)
        else:
            self.length -= abs(n)


class RemoveCountCache(LegacyCropCache):
    """transformers 5.24: crop(n) removes |n| tokens and refuses a positive n."""

    def crop(self, n: int) -> None:
        self.calls.append(n)
        if n > 0:
            raise ValueError("Calling `crop` with a positive value is not supported")
        self.length -= abs(n)


class PositiveRemoveCache(LegacyCropCache):
    """A crop(n) where n > 0 is the number of tokens to remove and n < 0 is refused."""

    def crop(self, n: int) -> None:
        self.calls.append(n)
        if n < 0:
            raise ValueError("negative crop")
        self.length -= n


class WrongCache(LegacyCropCache):
    """A crop that silently does something else."""

    def crop(self, n: int) -> None:
        self.length = 1


@pytest.mark.parametrize("cache_type", [LegacyCropCache, RemoveCountCache, PositiveRemoveCache])
def test_crop_keeps_exactly_the_prefix(cache_type):
    cache = cache_type(10)
    crop_cache(cache, 7)
    assert cache.length == 7
    crop_cache(cache, 7)  # nothing to remove: crop is not called
    assert cache.length == 7
    assert len([c for c in cache.calls if c < 0]) == 1


def test_wrong_length_after_crop_fails_loudly():
    with pytest.raises(CacheRollbackError, match="left 1 tokens, expected 4"):
        crop_cache(WrongCache(6), 4)


def test_keep_outside_the_cache_is_refused():
    with pytest.raises(ValueError):
        crop_cache(LegacyCropCache(3), 4)
    with pytest.raises(ValueError):
        crop_cache(LegacyCropCache(3), -1)


def test_real_dynamic_cache_rolls_back_and_continues(loaded_pair):
    target, _ = loaded_pair
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    with torch.inference_mode():
        _, cache = target.forward(ids, None)
        assert cache_length(cache) == 8
        crop_cache(cache, 5)
        assert cache_length(cache) == 5
        rolled, _ = target.forward(torch.tensor([[61, 62]]), cache)
        fresh, _ = target.forward(torch.tensor([[5, 17, 42, 99, 7, 61, 62]]), None)
    torch.testing.assert_close(rolled, fresh[-2:], rtol=1e-4, atol=1e-5)
