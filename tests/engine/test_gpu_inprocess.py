"""On NVIDIA GPUs: the same tokens on one card, on a two-card layer split, and the same
device by NVML index and by torch index (skipped without a GPU)."""

from __future__ import annotations

import os

import pytest
import torch

from engine.catalog import describe_model
from engine.loading import cuda_torch_index, load_model
from engine.local_drafter import LocalDrafter
from engine.speculative import SpeculativeDecoder, target_only

pytestmark = pytest.mark.gpu


def generate(target, draft, ids, k=4):
    return SpeculativeDecoder(target, LocalDrafter(draft), k, 0.0, 0).generate(ids, 32)


def test_greedy_on_one_gpu_equals_target_only(tiny_pair):
    target = load_model(describe_model(tiny_pair[0]), ["cuda:0"])
    draft = load_model(describe_model(tiny_pair[1]), ["cuda:0"])
    ids = list(target.tokenizer("def parse(text):")["input_ids"])
    spec = generate(target, draft, ids)
    base = target_only(target, ids, 32, 0.0, 0)
    assert spec.output_ids == base.output_ids
    assert spec.decode_tokens_per_s and base.decode_tokens_per_s
    assert {p.device.type for p in target.model.parameters()} == {"cuda"}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_layer_split_over_two_gpus_gives_the_same_tokens(tiny_pair):
    """On transformers' path and on the graph path, whose target is then one captured
    graph per device segment (float32: the same tokens as the whole model on one card)."""
    from engine.graph_decoder import open_graph_decoder

    info = describe_model(tiny_pair[0])
    whole = load_model(info, ["cuda:0"], dtype="float32")
    split = load_model(info, ["cuda:0", "cuda:1"], dtype="float32")
    draft = load_model(describe_model(tiny_pair[1]), ["cuda:1"], dtype="float32")
    assert {p.device.index for p in split.model.parameters()} == {0, 1}
    ids = list(whole.tokenizer("class Path:")["input_ids"])
    want = generate(whole, draft, ids).output_ids
    assert generate(split, draft, ids).output_ids == want
    graphs, path = open_graph_decoder(split.model)
    assert path.name == "cuda-graph", path.reason
    assert {device.index for device in graphs.devices} == {0, 1} and len(graphs.stages) >= 2
    spec = SpeculativeDecoder(split, LocalDrafter(draft), 4, 0.0, 0, target_decoder=graphs)
    assert spec.generate(ids, 32).output_ids == want
    assert target_only(split, ids, 32, 0.0, 0, target_decoder=graphs).output_ids == want


@pytest.mark.skipif(
    os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID",
    reason="set CUDA_DEVICE_ORDER=PCI_BUS_ID (as specdeck run does) before torch starts",
)
def test_nvml_index_maps_to_the_same_torch_device():
    import pynvml

    pynvml.nvmlInit()
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            torch_index = cuda_torch_index(index, uuid)
            props = torch.cuda.get_device_properties(torch_index)
            assert str(props.uuid) == uuid.removeprefix("GPU-").lower()
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_draft_path_on_a_gpu_matches_transformers(dtype):
    """The lean decoder's stacked projections on CUDA (row-major, torch's products)."""
    from engine.fast_decoder import LeanDecoder
    from tests.engine.test_fast_decoder import CONTEXT, llama, qwen3

    ids = torch.tensor(CONTEXT, device="cuda:0")
    for make in (llama, qwen3):
        model = make().to("cuda:0", dtype)
        with torch.inference_mode():
            before = model(ids[None]).logits[0].float()
        decoder = LeanDecoder(model)
        assert decoder.matmul == "torch"
        assert decoder.layers[0].qkv[0].is_contiguous()  # GPU weights keep their layout
        with torch.inference_mode():
            lean = decoder.forward(ids).float()
            after = model(ids[None]).logits[0].float()
        torch.testing.assert_close(after, before)  # the model still runs on the stacked views
        scale = before.abs().max().item()
        tolerance = 1e-4 if dtype == torch.float32 else 0.05  # relative to the largest logit
        assert (lean - before).abs().max().item() <= tolerance * scale
