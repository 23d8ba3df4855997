"""MultiLoraLinear: equals PEFT's LoRA layer per adapter inside a mixed batch, and its contracts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rapidfire_core.lora.layer as layer_module
from rapidfire_core.lora import LoraBatch, MultiLoraLinear, lora_batch
from rapidfire_core.ops import draw_keep_mask, triton_kernels
from tests.ops.peft_oracle import Spec, peft_multi_lora

SPECS = {"a": Spec(4, 8), "b": Spec(16, 16, dropout=0.1, rslora=True), "c": Spec(1, 2, dropout=0.3)}
SEGMENTS = [("a", 5), (None, 3), ("c", 6), ("b", 4), ("b", 0), ("a", 2)]


def make_layer(dtype=torch.float64, k=24, n=20, seed=0) -> MultiLoraLinear:
    torch.manual_seed(seed)
    layer = MultiLoraLinear(nn.Linear(k, n).to(dtype))
    for name, s in SPECS.items():
        layer.add_adapter(name, r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, use_rslora=s.rslora)
    with torch.no_grad():  # B starts at zero (PEFT init); give it values so every gradient is non-trivial
        for p in layer.lora_B.parameters():
            p.normal_()
    return layer


def _segments_by_index(names):
    out, start = [], 0
    for name, rows in SEGMENTS:
        out.append((start, start + rows, names.index(name) if name else -1))
        start += rows
    return out


def _capture_masks(monkeypatch) -> list[torch.Tensor]:
    masks = []

    def recording(row_p, num_cols, generator=None):
        keep = draw_keep_mask(row_p, num_cols, generator)
        masks.append(keep)
        return keep

    monkeypatch.setattr(layer_module, "draw_keep_mask", recording)
    return masks


def _layer_step(layer, x, grad_out, batch):
    x = x.clone().requires_grad_()
    with lora_batch(batch):
        out = layer(x)
    (out * grad_out).sum().backward()
    names = layer.adapter_names
    return {
        "out": out.detach(),
        "dx": x.grad,
        "da": [layer.lora_A[n].weight.grad for n in names],
        "db": [layer.lora_B[n].weight.grad for n in names],
    }


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-dropout"])
def test_layer_equals_peft_per_adapter(monkeypatch, training):
    layer = make_layer()
    layer.train(training)
    masks = _capture_masks(monkeypatch)
    names = list(layer.adapter_names)
    m = sum(rows for _, rows in SEGMENTS)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(m, 24, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(m, 20, generator=gen, dtype=torch.float64)
    got = _layer_step(layer, x, grad_out, LoraBatch(SEGMENTS))
    assert len(masks) == (1 if training else 0)  # eval: no dropout at all
    specs = [SPECS[n] for n in names]
    weights = [(layer.lora_A[n].weight.detach(), layer.lora_B[n].weight.detach()) for n in names]
    want = peft_multi_lora(
        layer.base_layer, specs, weights, x, _segments_by_index(names), grad_out, masks[0] if masks else None
    )
    torch.testing.assert_close(got["out"], want["out"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got["dx"], want["dx"], rtol=1e-10, atol=1e-10)
    for i, n in enumerate(names):
        torch.testing.assert_close(got["da"][i], want["da"][i], rtol=1e-10, atol=1e-10, msg=f"dA {n}")
        torch.testing.assert_close(got["db"][i], want["db"][i], rtol=1e-10, atol=1e-10, msg=f"dB {n}")
    assert layer.base_layer.weight.grad is None and not layer.base_layer.weight.requires_grad


def test_triton_path_equals_torch_path(kernel_device, monkeypatch):
    """The layer on the kernels (interpreter on CPU) equals the reference path, dropout mask included."""
    masks = _capture_masks(monkeypatch)
    results = []
    for backend in ("torch", "triton"):
        layer = make_layer(torch.float32).to(kernel_device).train()
        m = sum(rows for _, rows in SEGMENTS)
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(m, 24, generator=gen).to(kernel_device)
        grad_out = torch.randn(m, 20, generator=gen).to(kernel_device)
        batch = LoraBatch(SEGMENTS, kernel_device, generator=torch.Generator(kernel_device).manual_seed(5))
        with triton_kernels(backend == "triton"):
            results.append(_layer_step(layer, x, grad_out, batch))
    assert torch.equal(masks[0], masks[1])  # same generator seed -> same mask on both paths
    ref, got = results
    for key in ("out", "dx"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-4)
    for i in range(len(SPECS)):
        torch.testing.assert_close(got["da"][i], ref["da"][i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got["db"][i], ref["db"][i], rtol=1e-4, atol=1e-4)


def test_two_backward_passes_are_bit_identical(kernel_device):
    layer = make_layer(torch.float32).to(kernel_device)
    m = sum(rows for _, rows in SEGMENTS)
    x = torch.randn(m, 24, device=kernel_device)
    g = torch.randn(m, 20, device=kernel_device)
    runs = []
    for _ in range(2):  # same dropout mask both times (seeded generator), so only the reductions could differ
        layer.zero_grad(set_to_none=True)
        batch = LoraBatch(SEGMENTS, kernel_device, generator=torch.Generator(kernel_device).manual_seed(3))
        with triton_kernels():
            runs.append(_layer_step(layer, x, g, batch))
    for key in ("da", "db"):
        for first, second in zip(runs[0][key], runs[1][key], strict=True):
            assert torch.equal(first, second)


def test_adapter_without_rows_gets_no_gradient():
    layer = make_layer()
    x = torch.randn(7, 24, dtype=torch.float64)
    with lora_batch(LoraBatch([("a", 4), (None, 3)])):
        layer(x).sum().backward()
    assert layer.lora_A["a"].weight.grad is not None
    for name in ("b", "c"):  # an optimizer must not see zeros for a run that did not step
        assert layer.lora_A[name].weight.grad is None and layer.lora_B[name].weight.grad is None


def test_outside_a_batch_the_layer_is_its_base():
    layer = make_layer()
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
    with lora_batch(LoraBatch([(None, 10)])):  # rows, but none for this layer's adapters
        torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)


def test_leading_dims_are_flattened_into_rows():
    layer = make_layer().eval()  # eval: no dropout, so two calls give the same output
    x = torch.randn(2, 10, 24, dtype=torch.float64)
    with lora_batch(LoraBatch([("a", 10), ("c", 10)])):
        out = layer(x)
        flat = layer(x.reshape(20, 24))
    assert out.shape == (2, 10, 20)
    torch.testing.assert_close(out.reshape(20, 20), flat, rtol=0, atol=0)


def test_row_count_mismatch_is_a_clear_error():
    layer = make_layer()
    with lora_batch(LoraBatch([("a", 4)])), pytest.raises(ValueError, match="got 5 rows.*describes 4"):
        layer(torch.randn(5, 24, dtype=torch.float64))


def test_bad_adapter_arguments_are_rejected():
    layer = make_layer()
    with pytest.raises(ValueError, match="already exists"):
        layer.add_adapter("a", r=2, lora_alpha=2)
    with pytest.raises(ValueError, match="no '.'"):
        layer.add_adapter("x.y", r=2, lora_alpha=2)
    with pytest.raises(ValueError, match="lora_dropout"):
        layer.add_adapter("d", r=2, lora_alpha=2, lora_dropout=1.0)
    with pytest.raises(ValueError, match="init_lora_weights"):
        layer.add_adapter("d", r=2, lora_alpha=2, init_lora_weights="pissa")
    layer.delete_adapter("c")
    assert layer.adapter_names == ("a", "b")


def test_adapter_dtype_follows_peft():
    """bf16 base -> fp32 adapters (PEFT's autocast_adapter_dtype), and the output keeps the base dtype."""
    layer = MultiLoraLinear(nn.Linear(16, 8).to(torch.bfloat16))
    layer.add_adapter("a", r=4, lora_alpha=4)
    layer.add_adapter("b", r=4, lora_alpha=4, autocast_adapter_dtype=False)
    assert layer.lora_A["a"].weight.dtype == torch.float32
    assert layer.lora_A["b"].weight.dtype == torch.bfloat16
    with lora_batch(LoraBatch([("a", 3)])):
        assert layer(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_keep_mask_rate_and_zero_p_rows():
    row_p = torch.tensor([0.0] * 50 + [0.3] * 50 + [0.9] * 50)
    keep = draw_keep_mask(row_p, 400, torch.Generator().manual_seed(0))
    assert keep.dtype == torch.bool and keep.shape == (150, 400)
    assert keep[:50].all()
    assert abs(keep[50:100].float().mean().item() - 0.7) < 0.02
    assert abs(keep[100:].float().mean().item() - 0.1) < 0.02


def test_batch_layouts_and_validation():
    batch = LoraBatch([("a", 3), ("b", 0), (None, 2), ("c", 4), ("a", 1)], adapter_sets=[("a", "b"), ("c",)])
    assert batch.adapters == ("a", "c")  # "b" has no rows: not active, so it gets no gradient
    layout = batch.layout_for(("a", "b"))
    assert layout.active == ("a",) and layout.seg_slot.tolist() == [0, -1, -1, -1, 0]
    assert layout.seg_starts.tolist() == [0, 3, 3, 5, 9, 10] and layout.num_rows == 10
    assert layout.segments == ((0, 3, 0), (3, 3, -1), (3, 5, -1), (5, 9, -1), (9, 10, 0))
    assert batch.layout_for(("a", "b")) is layout  # built once per step, then cached
    assert batch.row_values(batch.layout_for(("c",)), (0.5,)).tolist() == [0] * 5 + [0.5] * 4 + [0]
    with pytest.raises(ValueError, match="does not have.*'zz'"):
        LoraBatch([("zz", 3)], adapter_sets=[("a",)])
    with pytest.raises(ValueError, match="at least one segment"):
        LoraBatch([])
    with pytest.raises(ValueError, match=">= 0"):
        LoraBatch([("a", -1)])


def test_adapters_of_mixed_dtypes_in_one_batch(kernel_device):
    """fp32 and bf16 adapters side by side (autocast_adapter_dtype per adapter): the kernels' stack
    casts each to the compute dtype; both backends agree and each adapter gets a gradient in its
    own dtype."""
    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        layer = MultiLoraLinear(nn.Linear(16, 8).to(kernel_device))
        layer.add_adapter("a", r=4, lora_alpha=4)
        layer.add_adapter("b", r=2, lora_alpha=4)
        with torch.no_grad():
            for p in layer.lora_B.parameters():
                p.normal_()
        layer.lora_A["b"].to(torch.bfloat16), layer.lora_B["b"].to(torch.bfloat16)
        x = torch.randn(5, 16, device=kernel_device, generator=torch.Generator(kernel_device).manual_seed(1))
        with triton_kernels(backend == "triton"), lora_batch(LoraBatch([("a", 3), ("b", 2)], kernel_device)):
            layer(x).sum().backward()
        grads = [layer.lora_A[n].weight.grad for n in ("a", "b")]
        assert [g.dtype for g in grads] == [torch.float32, torch.bfloat16]
        results.append(grads)
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_base_output_is_never_rounded_to_the_lora_dtype(kernel_device, backend):
    """fp32 base, fp16 adapters, no autocast (PEFT: `result + lora_out * scaling`, in fp32): rows
    of no adapter come back bit-identical to the base output, adapted rows add the fp16 LoRA term
    to the unrounded fp32 base output, and the result stays fp32."""
    torch.manual_seed(0)
    layer = MultiLoraLinear(nn.Linear(16, 8).to(kernel_device))
    layer.add_adapter("a", r=4, lora_alpha=8)
    with torch.no_grad():
        layer.lora_B["a"].weight.normal_()
    layer.lora_A["a"].half(), layer.lora_B["a"].half()
    x = torch.randn(7, 16, device=kernel_device)
    base = layer.base_layer(x)
    with triton_kernels(backend == "triton"), lora_batch(LoraBatch([("a", 4), (None, 3)], kernel_device)):
        out = layer(x)
    assert out.dtype == torch.float32
    assert torch.equal(out[4:], base[4:])
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    lora = (x[:4].half() @ a.T @ b.T).float() * layer.specs["a"].scaling
    torch.testing.assert_close(out[:4], base[:4] + lora, rtol=2e-3, atol=2e-3)
