"""The placement and generation options of `specdeck run` and `specdeck bench` as a run spec,
and the one check of it with the config's settings (no torch, no terminal)."""

from __future__ import annotations

import argparse
from typing import Any

from engine.errors import EngineInputError
from ipc.run_spec import CheckedRun, RunSpec, parse_placement_ids, read_prompt_file


def spec_from_args(args: argparse.Namespace, prompts: tuple[str, ...] | None = None) -> RunSpec:
    """The run spec the placement and generation options describe (checked by check_run)."""
    target, draft = parse_placement_ids(args.target, args.draft)
    return RunSpec(
        target_model=args.target_model,
        draft_model=args.draft_model,
        target=target,
        draft=draft,
        mode=args.mode,
        k=args.k,
        temperature=args.temperature,
        seed=args.seed,
        prompts=prompts or (read_prompt(args.prompt, args.prompt_file),),
        max_new_tokens=args.max_new_tokens,
        baseline=args.baseline,
        trust_remote_code=args.trust_remote_code,
        transport=getattr(args, "transport", "ipc"),
    )


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
