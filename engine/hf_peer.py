"""transformers' assisted generation (`assistant_model=`): the peer specdeck is benched against.

It runs inside the target daemon (in-process mode: the draft is loaded there too), one prompt
per `start` with `decoder = "hf-assisted"`, timed as specdeck is: decode time = the full
call minus a max_new_tokens=1 call (the prefill).
"""

from __future__ import annotations

import time
from typing import Any

from engine.metrics import AcceptanceStats
from engine.speculative import GenerationResult


class _StepCounter:
    """A transformers streamer that counts the pieces generate() hands it (the prompt first,
    then what each step committed)."""

    def __init__(self) -> None:
        self.puts = 0

    def put(self, value: Any) -> None:
        self.puts += 1

    def end(self) -> None:
        pass


def assisted_generation(
    target: Any,
    draft: Any,
    prompt_ids: list[int],
    max_new_tokens: int,
    k: int | str,
    temperature: float,
    seed: int,
) -> GenerationResult:
    """One prompt through `model.generate(assistant_model=...)`, as specdeck's own result."""
    import torch

    model, assistant = target.model, draft.model
    gen = assistant.generation_config
    if isinstance(k, int):  # a fixed k: k drafts every step, as specdeck drafts them
        gen.num_assistant_tokens = k
        gen.num_assistant_tokens_schedule = "constant"
        if hasattr(gen, "assistant_confidence_threshold"):
            gen.assistant_confidence_threshold = 0.0
    eos = sorted(target.eos_token_ids)
    sampling = {"do_sample": False} if temperature == 0 else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0,
    }  # fmt: skip

    def generate(new_tokens: int, streamer: Any = None) -> tuple[list[int], float]:
        input_ids = torch.tensor([prompt_ids], device=target.input_device)
        if temperature > 0:
            torch.manual_seed(seed)
        target.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                assistant_model=assistant,
                max_new_tokens=new_tokens,
                min_new_tokens=0,
                eos_token_id=eos or None,
                pad_token_id=eos[0] if eos else None,
                streamer=streamer,
                **sampling,
            )
        target.synchronize()
        return out[0, len(prompt_ids) :].tolist(), time.perf_counter() - start

    _, prefill_s = generate(1)
    counter = _StepCounter()
    output, wall_s = generate(max_new_tokens, counter)
    steps = max(counter.puts - 1, 0)
    # transformers tells neither drafted nor accepted: only steps and what they committed
    stats = AcceptanceStats(steps=steps, committed=len(output) if steps else 0)
    eos = set(target.eos_token_ids)
    return GenerationResult(
        output_ids=output,
        steps=[],
        stats=stats,
        prefill_s=prefill_s,
        decode_s=max(wall_s - prefill_s, 0.0),
        wall_s=wall_s,
        k_history=[],
        stop_reason="eos" if output and output[-1] in eos else "max_new_tokens",
    )
