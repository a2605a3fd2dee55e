"""Every run names each role's decode path and why it is not the CUDA-graph one, in both
modes; the draft daemon answers `prepare` (sizing and capturing before `begin`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main
from ipc import codec
from ipc.draft_daemon import DraftDaemon, decode_path_facts


@pytest.fixture(scope="module")
def loaded_draft_daemon(tiny_pair):
    """A DraftDaemon over the tiny draft on the CPU, answered without sockets."""
    from engine.catalog import describe_model
    from engine.loading import load_model
    from engine.local_drafter import LocalDrafter

    drafter = LocalDrafter(load_model(describe_model(tiny_pair[1]), ["cpu"]))
    return DraftDaemon(drafter, {"role": "draft", **decode_path_facts(drafter)})


def run_json(capsys, pair, *argv: str) -> dict:
    code = main(
        ["run", "--target-model", str(pair[0]), "--draft-model", str(pair[1]), "--target", "cpu",
         "--prompt", "def f(x):", "--max-new-tokens", "8", "--k", "3", "--json", *argv]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def check_cpu_paths(result: dict) -> None:
    paths = result["decode_paths"]
    assert paths["target"]["path"] == "transformers"
    assert "CUDA" in paths["target"]["reason"]  # the user sees why the fast path was not taken
    assert paths["draft"]["path"] == "lean" and "CUDA" in paths["draft"]["reason"]
    assert result["capture_s"] == 0.0


def test_an_inprocess_run_names_both_decode_paths(tiny_pair, capsys):
    check_cpu_paths(run_json(capsys, tiny_pair, "--mode", "inprocess"))


def test_a_split_run_names_both_decode_paths(tiny_pair, capsys):
    check_cpu_paths(run_json(capsys, tiny_pair, "--mode", "split", "--draft", "cpu"))


def test_the_draft_daemon_prepares_and_refuses_impossible_sizes(loaded_draft_daemon):
    daemon = loaded_draft_daemon
    assert daemon.welcome["decode_path"] == "lean"

    def prepare(ks, context=64, temperature=0.0):
        frames = codec.encode(
            "prepare",
            {"context_tokens": context, "temperature": temperature},
            id=7,
            arrays={"ks": np.asarray(ks, dtype=np.int64)},
        )
        return codec.decode(daemon.handle(frames))

    reply = prepare([3, 4])
    assert reply.type == "ok" and reply["capture_s"] == 0.0  # the lean path captures nothing
    for bad in (prepare([0]), prepare([65]), prepare([]), prepare([3], context=0)):
        assert bad.type == "error" and bad["code"] == "bad-value"


WELCOME_BASE = {
    "role": "draft",
    "model": "m",
    "tokenizer_fingerprint": None,
    "device_ids": ["cuda:0"],
    "torch_version": "2.11",
    "torch_build": "cuda",
    "pid": 1,
}


def test_welcome_facts_name_the_path_only_where_a_drafter_has_one():
    from types import SimpleNamespace

    from engine.graph_decoder import DecodePath

    assert decode_path_facts(object()) == {}
    lean = SimpleNamespace(path=DecodePath("lean", "no CUDA"))
    assert decode_path_facts(lean) == {"decode_path": "lean", "decode_path_reason": "no CUDA"}
    graphs = SimpleNamespace(path=DecodePath("cuda-graph", None, 1.0, "triton", "no products"))
    facts = decode_path_facts(graphs)
    assert facts["decode_kernels"] == "triton" and facts["decode_kernels_reason"] == "no products"
    frames = codec.encode("welcome", {**WELCOME_BASE, **facts}, id=1)
    assert codec.decode(frames)["decode_kernels"] == "triton"  # the protocol carries them


def test_the_warm_ups_capture_seconds_count_in_the_first_prompts():
    """With a warm-up (the default), graphs are captured in it: its seconds must not vanish
    from the record, in all and per role."""
    from ipc.runner import _with_capture

    warmup = {
        "capture_s": 2.5,
        "decode_paths": {
            "target": {"path": "cuda-graph", "reason": None, "capture_s": 1.5},
            "draft": {"path": "cuda-graph", "reason": None, "capture_s": 1.0},
        },
    }
    first = {
        "capture_s": 0.25,
        "output_token_ids": [1, 2],
        "decode_paths": {
            "target": {"path": "cuda-graph", "reason": None, "capture_s": 0.25},
            "draft": {"path": "cuda-graph", "reason": None, "capture_s": 0.0},
        },
    }
    got = _with_capture(first, warmup)
    assert got["capture_s"] == 2.75 and got["output_token_ids"] == [1, 2]
    assert got["decode_paths"]["target"]["capture_s"] == 1.75
    assert got["decode_paths"]["draft"]["capture_s"] == 1.0
    assert first["capture_s"] == 0.25  # the daemon's own document is left as it was
    assert _with_capture(first, {}) is first
    assert _with_capture(first, {"capture_s": 0.0}) is first


def test_the_warm_ups_capture_progress_is_shown_and_its_decoding_is_not():
    from ipc import events as ev
    from ipc.runner import _Run
    from ipc.supervisor import Incoming

    seen: list = []
    run = _Run(None, None, None, None, {}, None, seen.append, "", 1.0)
    run.warming = True

    def status(state: str, text: str) -> Incoming:
        frames = codec.encode("status", {"role": "target", "state": state, "text": text})
        return Incoming("target", "telemetry", codec.decode(frames))

    for state, text in (("capture", "capturing verify k=4 (1/2)"), ("prefill", "of 9"),
                        ("decode", "decoding")):  # fmt: skip
        run._handle(None, status(state, text))
    assert seen == [ev.StatusEvent("target", "capture", "warm-up: capturing verify k=4 (1/2)")]
