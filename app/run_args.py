"""The placement and generation options of `specdeck run` and `specdeck bench` as a run spec,
and the one check of it with the config's settings (no torch, no terminal)."""

from __future__ import annotations

import argparse
from typing import Any

from engine.errors import EngineInputError
from ipc.run_spec import CheckedRun, RunSpec, parse_placement_ids, read_prompt_file


def spec_from_args(args: argparse.Namespace, prompts: tuple[str, ...] | None = None) -> RunSpec:
    """The run spec the placement, generation and workload options describe (checked by
    check_run); `prompts` given (the bench's) take the place of the prompt options."""
    target, draft = parse_placement_ids(args.target, args.draft)
    if prompts is None:
        prompts, ids, source = workload_prompts(
            prompt=args.prompt,
            prompt_file=args.prompt_file,
            prompts_file=getattr(args, "prompts_file", None),
            suite=getattr(args, "suite", None),
            n=getattr(args, "n", None),
        )
        workload = {"prompt_ids": ids, "prompt_source": source, "n": getattr(args, "n", None)}
    else:
        workload = {}
    return RunSpec(
        target_model=args.target_model,
        draft_model=args.draft_model,
        target=target,
        draft=draft,
        mode=args.mode,
        k=args.k,
        temperature=args.temperature,
        seed=args.seed,
        prompts=prompts,
        max_new_tokens=args.max_new_tokens,
        baseline=args.baseline,
        trust_remote_code=args.trust_remote_code,
        transport=getattr(args, "transport", "ipc"),
        repeat=getattr(args, "repeat", None),
        duration=getattr(args, "duration", None),
        **workload,
    )


def workload_prompts(
    *,
    prompt: str | None = None,
    prompt_file: str | None = None,
    prompts_file: str | None = None,
    suite: str | None = None,
    n: int | None = None,
    file_option: str = "--prompts-file",
) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(prompts, their ids, their source) from one of --prompt, --prompt-file, --prompts-file
    and --suite (the default prompt without any); `n` (cut by the check) needs a list.
    `file_option` is what the user calls the prompts file (the dashboard's sentences)."""
    given = [
        flag
        for flag, value in (
            ("--prompt", prompt),
            ("--prompt-file", prompt_file),
            ("--prompts-file", prompts_file),
            ("--suite", suite),
        )
        if value is not None
    ]
    if len(given) > 1:
        several = "both" if len(given) == 2 else "several"
        raise EngineInputError(f"give {', '.join(given[:-1])} or {given[-1]}, not {several}")
    if n is not None and suite is None and prompts_file is None:
        raise EngineInputError("--n takes the first N of --suite or --prompts-file")
    if suite is not None:
        from app.bench.suites import read_suite

        chosen = read_suite(suite)
        return tuple(p.text for p in chosen), tuple(p.id for p in chosen), suite
    if prompts_file is not None:
        from ipc.run_spec import read_prompts_file

        return (*read_prompts_file(prompts_file, file_option), prompts_file)
    return (read_prompt(prompt, prompt_file),), (), ""


def check_spec(spec: RunSpec, args: argparse.Namespace, inventory: Any) -> CheckedRun:
    """ipc.run_spec.check_run with the config's settings and the command line's folders."""
    from app.config import load_config
    from ipc.run_spec import check_run

    config = load_config(args.config)
    return check_run(
        spec,
        inventory,
        model_dirs=[*config.model_dirs, *getattr(args, "models_dir", [])],
        trusted=config.trust_remote_code,
        backend_python=config.backend_python,
        config_path=str(config.path),
    )


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt text from --prompt or --prompt-file (the default prompt without either)."""
    from ipc.run_spec import DEFAULT_PROMPT

    if prompt is not None and prompt_file is not None:
        raise EngineInputError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        return read_prompt_file(prompt_file)
    return DEFAULT_PROMPT if prompt is None else prompt
