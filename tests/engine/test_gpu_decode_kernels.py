"""On an NVIDIA GPU: the graph path's Triton products (`decode_kernels.linear`: RMSNorm,
SiLU gating, bias and residual joined to the product) agree with torch, launched with and
without programmatic dependent launch; a draft's bursts through them propose the same
tokens as through the torch ops in float32, a draft picks them or cuBLAS by timing both,
and speculative output through them equals target-only output (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from engine import decode_kernels
from engine.graph_decoder import GREEDY, GraphDecoder
from engine.loading import LoadedModel
from engine.local_drafter import LocalDrafter
from engine.speculative import SpeculativeDecoder, target_only
from tests.engine.test_fast_decoder import CONTEXT, qwen3

pytestmark = pytest.mark.gpu

PDL = [False, True] if decode_kernels.pdl_available(torch.device("cuda:0")) else [False]


@pytest.mark.parametrize("pdl", PDL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape",
    [
        (16, 8, 128, 1024, 3072, True),  # Qwen3-0.6B's widths
        (4, 2, 64, 200, 333, False),  # widths that fill no block: every mask used
    ],
)
def test_every_kernel_agrees_with_torch(shape, dtype, pdl):
    heads, kv_heads, head_dim, hidden, intermediate, qk_norm = shape
    problem = decode_kernels.self_check(
        torch.device("cuda:0"),
        dtype,
        heads,
        kv_heads,
        head_dim,
        hidden,
        qk_norm,
        intermediate=intermediate,
        pdl=pdl,
    )
    assert problem is None


def test_a_product_writes_every_output_and_nothing_else():
    """Outputs poisoned with NaN before the kernel; rows are read only up to the width."""
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(1000, 777, generator=gen).cuda()
    x = torch.randn(2, 777, generator=gen).cuda()
    residual = torch.randn(2, 1000, generator=gen).cuda()
    wide = torch.full((2, 1200), float("nan"), device="cuda:0")  # rows with a NaN tail
    wide[:, :777] = x
    got = decode_kernels.linear(wide[:, :777], (weight, None), residual=residual)
    want = residual + x @ weight.t()
    assert torch.isfinite(got).all()
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    with pytest.raises(ValueError):
        decode_kernels.linear(torch.zeros(decode_kernels.GEMV_ROWS + 1, 777).cuda(), (weight, None))


def on_gpu(model) -> LoadedModel:
    model = model.to("cuda:0", torch.float32)
    return LoadedModel(model=model, tokenizer=None, info=None, devices=("cuda:0",))


def burst_tokens(model, kernels: str, products: bool, k: int = 5) -> list[int]:
    graphs = GraphDecoder(model, kernels=kernels)
    assert graphs.kernels == kernels, graphs.kernels_reason
    graphs.burst_products = products  # no timing: this kind of product
    graphs.prepare(64, burst_ks=[k], mode=GREEDY)
    graphs.begin(0.0, 0)
    graphs.start_draft(CONTEXT)
    graphs.run("burst", k, GREEDY)
    return graphs.draft_out[:k].tolist()


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False, "hidden_size": 48}])
def test_a_burst_through_triton_products_proposes_what_torch_does_float32(overrides):
    model = on_gpu(qwen3(**overrides)).model  # head_dim 16: the smallest Triton's dot takes
    assert burst_tokens(model, "triton-gemv", True) == burst_tokens(model, "torch", False)


def test_a_draft_times_both_products_and_keeps_the_faster():
    graphs = GraphDecoder(on_gpu(qwen3()).model, kernels="triton-gemv")
    assert graphs.burst_products is None  # not chosen before a burst is captured
    graphs.prepare(64, burst_ks=[3], mode=GREEDY)
    ms = graphs.burst_products_ms
    assert set(ms) == {"triton", "cublas"} and all(t > 0 for t in ms.values())
    assert graphs.burst_products == (ms["triton"] < ms["cublas"])
    graphs.begin(0.0, 0)
    graphs.start_draft(CONTEXT)
    graphs.run("burst", 3, GREEDY)  # the captured programs run after the trial graphs


@pytest.mark.parametrize("k", [1, 5])
def test_speculative_through_triton_products_equals_target_only_float32(k, monkeypatch):
    """The draft (a Qwen3 the kernels serve) proposes through Triton products."""
    monkeypatch.setenv("SPECDECK_DECODE_KERNELS", "triton-gemv")
    target = on_gpu(qwen3())
    graphs = GraphDecoder(target.model)
    assert graphs.kernels == "triton-gemv"
    alone = target_only(target, CONTEXT, 48, 0.0, 0, target_decoder=graphs)
    assert alone.output_ids == target_only(target, CONTEXT, 48, 0.0, 0).output_ids
    drafter = LocalDrafter(on_gpu(qwen3(num_hidden_layers=1, hidden_size=32)))
    assert drafter.decode_path == "cuda-graph"
    drafter.graph.burst_products = True
    result = SpeculativeDecoder(target, drafter, k, 0.0, 0, target_decoder=graphs).generate(
        CONTEXT, 48
    )
    assert result.output_ids == alone.output_ids
