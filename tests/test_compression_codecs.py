"""Codecs of the final-compression stage built so far: the LFSR, SeedLM and the RTN baseline."""
import torch

from agent_forge_core.compression import lfsr
from agent_forge_core.compression.codecs import get_codec
from agent_forge_core.compression.codecs.seedlm import basis_of, bases


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
