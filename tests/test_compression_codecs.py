"""Codecs of the final-compression stage: the LFSR, SeedLM, VPTQ, the RTN / GPTQ / GGUF baselines, bit
packing and exact bit accounting against the serialized payload."""
import math

import pytest
import torch

from agent_forge_core.compression import lfsr
from agent_forge_core.compression.codecs import get_codec
from agent_forge_core.compression.codecs.seedlm import basis_of, bases, projector_features, search_all, search_pruned
from agent_forge_core.errors import ConfigError


def test_lfsr_known_answer_and_maximal_period():
    # the 16-bit Fibonacci LFSR with taps 16,14,13,11 steps 0xACE1 -> 0x5670 (the textbook example)
    assert lfsr.step(0xACE1) == 0x5670
    assert lfsr.sequence(1, 4) == [0x8000, 0x4000, 0x2000, 0x1000]
    states, _ = lfsr.cycle()
    assert len(set(states.tolist())) == lfsr.PERIOD == 65535 and lfsr.step(int(states[-1])) == 1
    seeds = torch.tensor([1, 0xACE1, 65535]).numpy()
    for s, row in zip(seeds, lfsr.windows(seeds, 24)):
        assert row.tolist() == lfsr.sequence(int(s), 24)


def test_encoder_and_decoder_share_one_basis():
    seeds, U, _ = bases(8, 3, lfsr.PERIOD)
    pick = torch.tensor([5, 777, 65534])
    assert torch.equal(basis_of(seeds[pick], 8, 3), U[pick])
    assert float(U.min()) >= -1 and float(U.max()) < 1


def matrices():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(16, 48, generator=g) * 0.02
    heavy = torch.distributions.StudentT(3.0).sample((16, 48)) * 0.02
    return {"gaussian": gauss, "student-t(3)": heavy}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_seedlm_bits_are_exact_and_output_deterministic():
    w = matrices()["gaussian"]
    for (C, P, bpw) in ((8, 3, 4.0), (12, 4, 3.0)):
        c = get_codec("seedlm", C=C, P=P)
        enc = c.encode(w)
        blocks = -(-w.numel() // C)
        assert enc.bits == blocks * (16 + 4 + 4 * P) + 8
        assert (enc.bits - 8) / w.numel() == bpw  # plus one 8-bit exponent base per tensor
        assert int(enc.payload["mantissa"].min()) >= -8 and int(enc.payload["mantissa"].max()) <= 7
        assert int(enc.payload["exponent"].max()) <= 15
        again = c.encode(w)
        assert all(torch.equal(enc.payload[k], again.payload[k]) for k in enc.payload)


def test_seedlm_pruned_search_is_the_exhaustive_argmin():
    # the bound-pruned search the codec runs must pick exactly what scoring all 65,535 seeds picks,
    # also for all-zero blocks, tiny-norm blocks (exact ties) and heavy tails
    for (C, P) in ((8, 3), (12, 4)):
        _, U, pinv = bases(C, P, lfsr.PERIOD)
        feats = projector_features(C, P, lfsr.PERIOD)
        m = matrices()
        blocks = torch.cat([m["gaussian"].reshape(-1, C)[:10], m["student-t(3)"].reshape(-1, C)[:10],
                            torch.zeros(1, C), m["gaussian"].reshape(-1, C)[10:11] * 1e-6]).double()
        lo, hi = -20, -5
        k, e, q, scored = search_pruned(blocks, feats, U, pinv, lo, hi)
        k_ref, e_ref, q_ref = search_all(blocks, U, pinv, lo, hi)
        assert torch.equal(k, k_ref) and torch.equal(e, e_ref) and torch.equal(q, q_ref), (C, P)
        assert scored < 0.1 * lfsr.PERIOD * len(blocks)  # the bound did rule out most seeds


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_seedlm_cuda_search_without_a_gpu_is_refused_clearly():
    with pytest.raises(ConfigError, match="no usable CUDA device.*cpu or auto"):
        get_codec("seedlm", device="cuda").encode(torch.randn(4, 8))
    assert get_codec("seedlm", device="auto").device == "cpu"


def test_seedlm_beats_rtn_at_equal_or_fewer_bits():
    for name, w in matrices().items():
        for (C, P, rtn_bits, group) in ((8, 3, 3, 16), (12, 4, 2, 16)):  # RTN: 4.0 and 3.0 bits/weight
            s = get_codec("seedlm", C=C, P=P).encode(w)
            r = get_codec("rtn", bits=rtn_bits, group=group).encode(w)
            assert r.bits >= s.bits - 8  # equal bits but for seedlm's one 8-bit field per tensor
            es = rel(get_codec("seedlm").decode(s), w)
            er = rel(get_codec("rtn").decode(r), w)
            assert es < er, f"{name}: seedlm C={C} P={P} {es:.3f} vs rtn {rtn_bits}b/g{group} {er:.3f}"


def test_rtn_round_trip_and_bits():
    w = matrices()["gaussian"]
    enc = get_codec("rtn", bits=4, group=48).encode(w)
    assert enc.bits_per_weight == 4 + 16 / 48
    dec = get_codec("rtn").decode(enc)
    step = enc.payload["scale"].float().repeat_interleave(48, -1).reshape(w.shape)
    assert ((dec - w).abs() <= step / 2 + 1e-6).all()


def test_asymmetric_rtn_is_the_q4_1_form_and_beats_symmetric_on_skewed_weights():
    g = torch.Generator().manual_seed(3)
    w = torch.rand(16, 64, generator=g) * 0.05 - 0.01  # skewed: a symmetric grid wastes half its levels
    asym, sym = get_codec("rtn", bits=4, group=32, symmetric=False), get_codec("rtn", bits=4, group=32)
    enc = asym.encode(w)
    assert enc.bits_per_weight == 4 + 32 / 32 and int(enc.payload["q"].min()) >= 0 and int(enc.payload["q"].max()) <= 15
    s, m = (enc.payload[k].float().repeat_interleave(32, -1).reshape(w.shape) for k in ("scale", "min"))
    dec = get_codec("rtn").decode(enc)  # decodes from the payload alone
    assert torch.equal(dec, enc.payload["q"].float().reshape(w.shape) * s + m)
    assert ((dec - w).abs() <= s / 2 + 1e-4).all()
    assert rel(dec, w) < 0.6 * rel(sym.decode(sym.encode(w)), w)


def test_gptq_lowers_the_proxy_loss_of_rtn_on_the_same_grid():
    w = big_matrices()["gaussian"]
    H = calibration_hessian(w.shape[1])
    for bits, symmetric in ((3, False), (4, False), (4, True)):
        rtn, gptq = get_codec("rtn", bits=bits, group=64, symmetric=symmetric), get_codec("gptq", bits=bits, group=64, symmetric=symmetric)
        r, q = rtn.encode(w), gptq.encode(w, H)
        assert q.bits == r.bits and all(torch.equal(q.payload[k], r.payload[k]) for k in r.payload if k != "q")
        # GPTQ decodes as RTN does (the artifact needs no new decoder), only the rounding differs
        assert torch.equal(get_codec("gptq").decode(q), rtn.decode(q))
        assert proxy_loss(gptq.decode(q), w, H) < 0.8 * proxy_loss(rtn.decode(r), w, H)


@pytest.mark.parametrize("qtype,bpw", [("Q4_0", 4.5), ("Q4_1", 5.0), ("Q5_0", 5.5), ("Q8_0", 8.5)])
def test_gguf_blocks_are_the_gguf_package_bytes(qtype, bpw):
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    w = big_matrices()["student-t(3)"][:, :192]
    c = get_codec("gguf", type=qtype)
    enc = c.encode(w)
    reference = quants.quantize(w.numpy(), GGMLQuantizationType[qtype])
    assert np.array_equal(enc.payload["blocks"].numpy(), reference) and enc.bits_per_weight == bpw
    assert torch.equal(get_codec("gguf").decode(enc), torch.from_numpy(quants.dequantize(reference, GGMLQuantizationType[qtype])))
    with pytest.raises(ConfigError, match="32-weight blocks"):
        c.encode(w[:, :40])
    with pytest.raises(ConfigError, match="Q4_K"):
        get_codec("gguf", type="Q4_K")


def big_matrices():
    g = torch.Generator().manual_seed(1)
    gauss = torch.randn(128, 256, generator=g) * 0.02
    chi2 = (torch.randn(3, 128, 256, generator=g) ** 2).sum(0)
    heavy = torch.randn(128, 256, generator=g) / torch.sqrt(chi2 / 3) * 0.02  # Student-t, 3 degrees of freedom
    return {"gaussian": gauss, "student-t(3)": heavy}


def calibration_hessian(n_in: int, seed: int = 2) -> torch.Tensor:
    """H = XᵀX/n of anisotropic, correlated inputs (a few dominant features, as in real activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) * 0.1 + torch.diag(torch.rand(n_in, generator=g) ** 4 * 5)
    X = torch.randn(2048, n_in, generator=g) @ mix
    return X.T @ X / len(X)


def proxy_loss(w_hat, w, H):
    d = (w_hat - w).double()
    return torch.trace(d @ H.double() @ d.T).item()


def test_vptq_hessian_weighting_reduces_the_proxy_loss():
    w = big_matrices()["gaussian"]
    H = calibration_hessian(w.shape[1])
    c = get_codec("vptq", v=4, k=64)
    weighted = proxy_loss(c.decode(c.encode(w, H)), w, H)
    plain = proxy_loss(c.decode(c.encode(w)), w, H)  # unweighted k-means, no error feedback
    assert weighted < 0.8 * plain, (weighted, plain)


def test_vptq_beats_rtn_at_fewer_bits():
    for name, w in big_matrices().items():
        for kw, rtn_bits in ((dict(v=4, k=64), 2), (dict(v=4, k=64, residual_k=16), 3)):
            enc = get_codec("vptq", **kw).encode(w)
            r = get_codec("rtn", bits=rtn_bits, group=64).encode(w)
            assert enc.bits < r.bits
            ev, er = rel(get_codec("vptq").decode(enc), w), rel(get_codec("rtn").decode(r), w)
            assert ev < er, f"{name} {kw}: vptq {ev:.3f} ({enc.bits_per_weight:.2f} bpw) vs rtn {er:.3f}"


def test_vptq_outliers_permutation_and_bits():
    w = big_matrices()["student-t(3)"]
    H = calibration_hessian(w.shape[1])
    c = get_codec("vptq", v=4, k=64, residual_k=4, outlier_frac=0.05, permute=False)
    enc = c.encode(w, H)
    n_out = enc.params["n_outlier"]
    assert n_out == 13 and enc.params["levels"] == 2
    top = set(torch.sort(torch.diag(H), descending=True).indices[:n_out].tolist())
    assert set(enc.payload["perm"][:n_out].tolist()) == top  # the most important inputs are the outliers
    M, N = w.shape
    assert enc.bits == (M // 4) * N * (6 + 2) + (64 * 4 + 4 * 4) * 16 * 2 + N * 8
    err = rel(c.decode(enc), w)
    plain = get_codec("vptq", v=4, k=64, permute=False)
    assert err < rel(plain.decode(plain.encode(w, H)), w)  # the residual codebook helps
    again = c.encode(w, H)
    assert all(torch.equal(enc.payload[k], again.payload[k]) for k in enc.payload)


def test_bitpack_round_trip():
    from agent_forge_core.compression.bitpack import pack, packed_bytes, unpack

    g = torch.Generator().manual_seed(3)
    for width, signed in ((1, False), (3, False), (4, True), (12, False), (16, False)):
        lo, hi = (-(1 << (width - 1)), 1 << (width - 1)) if signed else (0, 1 << width)
        x = torch.randint(lo, hi, (1001,), generator=g)
        data = pack(x, width, signed)
        assert data.dtype == torch.uint8 and data.numel() == packed_bytes(1001, width)
        assert torch.equal(unpack(data, width, 1001, signed), x)


def test_serialized_size_matches_the_accounted_bits():
    """What a codec counts is what the safetensors payload holds (up to a byte of padding per field)."""
    from safetensors.torch import load, save

    from agent_forge_core.compression.bitpack import packed_bytes
    from agent_forge_core.compression.codecs.base import Encoded

    w = big_matrices()["gaussian"]
    for name, kw in (("rtn", dict(bits=3, group=64)), ("seedlm", dict(C=8, P=3, n_seeds=256)),
                     ("vptq", dict(v=4, k=64, residual_k=4, outlier_frac=0.02)), ("hyper", dict(n=64)),
                     ("rtn", dict(bits=5, group=32, symmetric=False)), ("gptq", dict(bits=3, group=64)),
                     ("gguf", dict(type="Q5_0"))):
        c = get_codec(name, **kw)
        enc = c.encode(w, calibration_hessian(w.shape[1]) if c.uses_hessian else None)
        stored = enc.packed()
        blob = save(stored)
        header = 8 + int.from_bytes(blob[:8], "little")
        stored_bytes = sum(packed_bytes(t.numel(), enc.widths[n][0]) if n in enc.widths else t.numel() * t.element_size()
                           for n, t in enc.payload.items())
        assert len(blob) - header == stored_bytes
        int_fields = len(enc.widths)
        assert 0 <= stored_bytes * 8 - (enc.bits - enc.extra_bits) < 8 * int_fields
        back = Encoded.from_packed(name, enc.shape, load(blob), enc.params, enc.widths,
                                   {k: list(v.shape) for k, v in enc.payload.items()}, enc.extra_bits)
        assert torch.equal(c.decode(back), c.decode(enc))
        assert save(c.encode(w, calibration_hessian(w.shape[1]) if c.uses_hessian else None).packed()) == blob  # deterministic


def test_hyper_codebook_is_the_reference_winding_and_nearest_point_is_exact():
    from agent_forge_core.compression.codecs.hyper import lattice_points, nearest_lattice

    g = torch.Generator().manual_seed(4)
    for n, L in ((4, 1.0), (64, 0.3), (1600, 0.1)):
        P = lattice_points(n, L)
        i = torch.arange(n, dtype=torch.float64)
        winding = torch.stack([(i * L / n) % L, (i * L / n**0.5) % L], 1)  # θ_i = i·s·d mod L
        gap = (P - winding).abs()
        assert torch.minimum(gap, L - gap).max() < 1e-12
        u = torch.rand(4000, 2, generator=g, dtype=torch.float64) * L
        brute = ((u[:, None] - P[None]) ** 2).sum(-1).min(1).values
        fast = ((u - P[nearest_lattice(u, n, L)]) ** 2).sum(1)
        assert torch.allclose(fast, brute, rtol=0, atol=1e-15)


def test_hyper_beats_rtn_at_equal_bits_and_counts_them():
    for name, w in big_matrices().items():
        r = get_codec("rtn", bits=3, group=16).encode(w)  # 4.0 bits/weight
        er = rel(get_codec("rtn").decode(r), w)
        for spacing in ("linear", "geometric"):
            c = get_codec("hyper", n=64, spacing=spacing)
            enc = c.encode(w)
            K = enc.params["K"]
            assert enc.bits == w.numel() // 2 * math.ceil(math.log2(64 * (K + 1))) + 4 * 32
            eh = rel(c.decode(enc), w)
            if spacing == "geometric" or name == "gaussian":
                assert enc.bits <= r.bits + 128 and eh < er, f"{name} {spacing}: hyper {eh:.3f} vs rtn {er:.3f}"
    # the paper's equal-width rings lose on heavy tails (the many points just outside the square are
    # scaled down most); geometric rings are our documented variant
    w = big_matrices()["student-t(3)"]
    lin, geo = (get_codec("hyper", n=64, spacing=s) for s in ("linear", "geometric"))
    assert rel(geo.decode(geo.encode(w)), w) < rel(lin.decode(lin.encode(w)), w)
