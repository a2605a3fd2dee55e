"""Generation options that the command line and the dashboard share: defaults, limits and the
check of a run against the models' context (plain Python: no torch, no terminal)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import EngineInputError

if TYPE_CHECKING:
    from engine.catalog import ModelInfo

DEFAULT_PROMPT = "def fibonacci(n):"
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_K = 6
DEFAULT_TEMPERATURE = 0.0
DEFAULT_SEED = 0

K_LIMIT = 64  # the draft daemon refuses more (ipc.draft_daemon.MAX_K)
AUTO_K_MOST = 16  # the most tokens k=auto drafts in a step (engine.speculative.K_MAX)
MAX_NEW_TOKENS_LIMIT = 1_000_000  # beyond any context a model has today
SEED_LIMIT = 2**64 - 1  # torch generators (and ipc.codec.MAX_SEED) take any seed up to here
PROMPT_FILE_LIMIT = 4 * 2**20  # bytes; about a million tokens, more than any context


def most_drafted(k: int | str) -> int:
    """The most tokens one step drafts with this k (`auto` grows up to AUTO_K_MOST)."""
    return AUTO_K_MOST if k == "auto" else int(k)


def check_max_new_tokens(value: int, option: str = "--max-new-tokens") -> None:
    """Raise EngineInputError unless 1 <= value <= MAX_NEW_TOKENS_LIMIT."""
    if not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
        raise EngineInputError(f"{option} must be from 1 to {MAX_NEW_TOKENS_LIMIT}, not {value}")


def check_seed(value: int, option: str = "--seed") -> None:
    """Raise EngineInputError unless 0 <= value <= SEED_LIMIT."""
    if not 0 <= value <= SEED_LIMIT:
        raise EngineInputError(f"{option} must be from 0 to 2**64-1, not {value}")


def run_context_problem(
    target: ModelInfo,
    draft: ModelInfo,
    prompt: str,
    max_new_tokens: int,
    k: int | str,
    option: str = "--max-new-tokens",
) -> str | None:
    """Why prompt + max new tokens + k overflow the target's or the draft's context, or None
    (`option`: what the advice calls the token budget).

    The prompt is counted with the target's tokenizer.json (the `tokenizers` library).
    """
    from engine.catalog import context_problem, count_prompt_tokens

    prompt_tokens = count_prompt_tokens(target, prompt)
    return context_problem(target, draft, prompt_tokens, max_new_tokens, most_drafted(k), option)
