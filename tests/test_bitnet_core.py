import pytest
import torch

from agent_forge_core.bitnet.bitlinear import BitLinear, PackedBitLinear
from agent_forge_core.bitnet import int_matmul
from agent_forge_core.bitnet.int_matmul import activation_codes
from agent_forge_core.bitnet.packing import FORMATS, pack, packed_size, unpack
from agent_forge_core.bitnet.ternary import quant_activation, quant_weight, weight_codes


def test_absmean_formula():
    w = torch.tensor([[0.5, -0.1, 0.02], [-0.9, 0.3, 0.0]])
    codes, gamma = weight_codes(w)
    assert gamma == pytest.approx(w.abs().mean().item())
    assert codes.tolist() == [[1, 0, 0], [-1, 1, 0]]  # round(w / gamma) clamped to [-1, 1]
    assert torch.equal(quant_weight(w), codes.float() * gamma)
    codes, gamma = weight_codes(w, per_channel=True)  # one gamma per output row
    assert gamma.shape == (2, 1) and torch.allclose(gamma[:, 0], w.abs().mean(1))
    assert codes.tolist() == [[1, 0, 0], [-1, 1, 0]]  # row 0: gamma 0.207, row 1: 0.4
    assert torch.equal(quant_weight(w, per_channel=True), codes.float() * gamma)
    wide = torch.tensor([[1.0, 0.5, 0.0], [0.01, -0.02, 0.03]])  # a small row ternarizes only with its own scale
    assert weight_codes(wide)[0][1].tolist() == [0, 0, 0]
    assert weight_codes(wide, per_channel=True)[0][1].tolist() == [0, -1, 1]


def test_activation_quant_is_per_token_8bit():
    x = torch.randn(3, 5, 16) * torch.tensor([1.0, 10.0, 0.01])[:, None, None]
    q = quant_activation(x)
    scale = 127 / x.abs().amax(-1, keepdim=True)
    levels = q * scale
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127.5
    assert torch.allclose(q, x, atol=(0.5 / scale).max().item() + 1e-6)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (13, 17), (64, 33), (2, 3, 11)])
def test_pack_unpack_exact(fmt, shape):
    g = torch.Generator().manual_seed(sum(shape))
    codes = torch.randint(-1, 2, shape, generator=g).to(torch.int8)
    packed = pack(codes, fmt)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(codes.numel(), fmt)
    assert torch.equal(unpack(packed, shape, fmt), codes)


def test_pack_rejects_non_ternary():
    with pytest.raises(ValueError, match="ternary codes"):
        pack(torch.tensor([0, 2]), "base3")


def test_weights_are_ternary_once_lambda_reaches_one():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    _, gamma = weight_codes(layer.weight)
    layer.lam.fill_(0.0)
    assert torch.equal(layer.effective_weight(), layer.weight)
    layer.lam.fill_(0.5)
    half = layer.effective_weight().detach()
    assert not torch.allclose(half, layer.weight) and not torch.allclose(half, quant_weight(layer.weight))
    layer.lam.fill_(1.0)
    for grad in (True, False):  # the training (STE) and the inference forms
        with torch.set_grad_enabled(grad):
            w = layer.effective_weight().detach()
        d = torch.stack([(w - t).abs() for t in (-gamma, torch.tensor(0.0), gamma)]).min(0).values
        assert d.max() < 1e-6, d.max()
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(quant_activation(x), quant_weight(layer.weight)))


def test_ste_gradient_is_identity_through_quantizer():
    torch.manual_seed(1)
    layer = BitLinear(16, 8, bias=True)
    layer.lam.fill_(1.0)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    # reference: the same loss with the quantized values as plain leaves
    wq = quant_weight(layer.weight.detach()).requires_grad_(True)
    xq = quant_activation(x.detach()).requires_grad_(True)
    torch.nn.functional.linear(xq, wq, layer.bias.detach()).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, wq.grad, atol=1e-5)
    assert torch.allclose(x.grad, xq.grad, atol=1e-5)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_packed_inference_equals_fake_quant(fmt, norm, per_channel):
    torch.manual_seed(2)
    layer = BitLinear(40, 24, bias=True, norm=norm, per_channel=per_channel)
    with torch.no_grad():
        layer.weight.mul_(torch.logspace(-2, 0, 24)[:, None])  # rows of very different sizes
    packed = PackedBitLinear.from_bitlinear(layer, fmt)
    x = torch.randn(2, 7, 40)
    with torch.no_grad():
        fake = layer(x)
        packed.kernel = "dequant"
        assert torch.equal(packed(x), fake)
        packed.kernel = "int8"
        # the int8 kernel's integer products are exact; only the fake-quant path's float sums round
        assert torch.allclose(packed(x), fake, rtol=1e-5, atol=1e-5 * float(fake.abs().max()))


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_kernel_is_the_exact_integer_product(per_channel):
    torch.manual_seed(3)
    layer = BitLinear(576, 64, bias=False, per_channel=per_channel)
    packed = PackedBitLinear.from_bitlinear(layer, "2bit")
    assert packed.gamma.shape == ((64, 1) if per_channel else ())
    x = torch.randn(5, 576) * 3
    q, s = activation_codes(x)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    exact = (q.double() @ packed.codes.double().t()) * (packed.gamma.double().reshape(-1) / s.double())
    with torch.no_grad():
        y = packed(x)
    assert torch.allclose(y.double(), exact, rtol=1e-6, atol=0)
    assert torch.equal(quant_activation(x), q.float() / s)  # the same codes as the fake-quant path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_kernel_shapes_and_dtypes(dtype):
    torch.manual_seed(4)
    layer = BitLinear(48, 16, bias=True)
    packed = PackedBitLinear.from_bitlinear(layer, "base3")
    with torch.no_grad():
        for shape in [(1, 48), (1, 1, 48), (3, 9, 48)]:  # a decode step, a batch of one, a prefill
            x = torch.randn(*shape).to(dtype)
            y = packed(x)
            assert y.shape == (*shape[:-1], 16) and y.dtype == dtype
            assert torch.allclose(y.float(), layer(x.float()), rtol=2e-2, atol=2e-2)


def test_wide_activations_fall_back_to_the_dequantizing_path():
    torch.manual_seed(5)
    layer = BitLinear(32, 8, act_bits=16)
    packed = PackedBitLinear.from_bitlinear(layer, "2bit")
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.equal(packed(x), layer(x))  # int8 cannot hold 16-bit codes: the float path ran
    with pytest.raises(ValueError, match="kernel"):
        PackedBitLinear(pack(packed.codes.contiguous(), "2bit"), packed.gamma, (8, 32), "2bit", kernel="int4")


def test_layers_reading_one_input_share_its_codes_and_nothing_else():
    torch.manual_seed(6)
    layers = [BitLinear(48, n, norm=norm, act_bits=bits) for n, norm, bits in
              [(16, False, 8), (24, False, 8), (16, True, 8), (16, False, 4), (16, True, 8)]]
    packed = [PackedBitLinear.from_bitlinear(m, "2bit") for m in layers]
    x = torch.randn(3, 5, 48)
    calls = []
    real = int_matmul.activation_codes
    int_matmul.activation_codes = lambda *a: calls.append(a[1]) or real(*a)
    try:
        with torch.no_grad():
            got = [p(x) for p in packed]  # as q, k, v read the normed hidden states one after the other
            again = packed[0](x.clone())  # equal values in another tensor: quantized anew
    finally:
        int_matmul.activation_codes = real
    # quantized for (8 bits, no norm), (8, norm), (4, no norm), then (8, norm) again after the 4-bit call,
    # and once more for the clone
    assert calls == [8, 8, 4, 8, 8]
    for p, m, y in zip(packed, layers, got):
        p.kernel = "dequant"
        with torch.no_grad():
            assert torch.allclose(y, p(x), rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    assert torch.equal(again, got[0])
