"""Training and decoding speed-ups that must not change the numbers: the frozen weights' bfloat16 copies give
autocast's own logits and gradients and leave the model as it was; the eager attention kernel gives sdpa's loss."""
from __future__ import annotations

import torch

from agent_forge_core.model_io import load_model
from agent_forge_core.training.attention import attention_kernel
from agent_forge_core.training.lora import lora_config
from agent_forge_core.training.precision import autocast, held_weights


def _frozen(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def test_bfloat16_copies_give_autocasts_logits_and_restore_the_float32_parameters(tiny_model_dir):
    model = _frozen(tiny_model_dir)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the tiny model ties its head
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    ids = torch.randint(0, model.config.vocab_size, (3, 17))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(input_ids=ids).logits
        with autocast("cpu", "bfloat16", model):
            assert model.lm_head.weight.dtype == torch.bfloat16
            assert model.get_input_embeddings().weight.dtype == torch.float32  # the lookup stays float32
            assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
            held = model(input_ids=ids).logits
    assert torch.equal(plain, held)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    for n, p in model.named_parameters():
        assert p is before[n][0] and p.dtype == torch.float32 and torch.equal(p, before[n][1]), n
    with autocast("cpu", "float32", model):  # off: nothing is swapped
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32


def test_trainable_weights_stay_float32_and_a_lora_gradient_is_unchanged(tiny_model_dir):
    from peft import get_peft_model

    ids = torch.randint(0, 500, (2, 11))
    grads = []
    for hold in (False, True):
        torch.manual_seed(0)
        student = get_peft_model(_frozen(tiny_model_dir), lora_config(4, 1.0, 0.0, ["q_proj", "v_proj"]))
        lora = [p for p in student.parameters() if p.requires_grad]
        with held_weights(student, "bfloat16" if hold else "float32"):
            assert all(p.dtype == torch.float32 for p in lora)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = student(input_ids=ids).logits.float().logsumexp(-1).mean()
            loss.backward()  # outside autocast, inside the copies, as a training step runs
        grads.append([p.grad.clone() for p in lora])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_training_step_with_eager_attention_has_sdpas_loss_and_gradient_and_the_kernel_is_put_back(tiny_model_dir):
    from peft import get_peft_model

    ids = torch.randint(3, 500, (3, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a right-padded row, as a batch of trajectories has
    torch.manual_seed(0)
    student = get_peft_model(_frozen(tiny_model_dir), lora_config(4, 1.0, 0.0, ["q_proj", "v_proj"]))
    assert student.get_base_model().config._attn_implementation == "sdpa"
    lora = [p for p in student.parameters() if p.requires_grad]
    out = {}
    for kernel in ("sdpa", "eager"):
        student.zero_grad()
        with attention_kernel(student, kernel):
            assert student.get_base_model().config._attn_implementation == kernel
            logits = student(input_ids=ids, attention_mask=mask).logits
            loss = (logits.logsumexp(-1) * mask).sum()
            loss.backward()
        out[kernel] = (loss.item(), [p.grad.clone() for p in lora])
    assert student.get_base_model().config._attn_implementation == "sdpa"
    assert abs(out["sdpa"][0] - out["eager"][0]) < 1e-4 * abs(out["sdpa"][0])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(out["sdpa"][1], out["eager"][1]))


def test_a_bfloat16_qat_step_has_float32s_loss_and_update_and_keeps_float32_weights(tiny_model_dir):
    """BitNet QAT with distillation (`bitnet.train_precision`, `train_attention`): one step in bfloat16 with the
    eager kernel against float32 with sdpa, from the same start on the same batch."""
    import copy
    import itertools

    from agent_forge_core.bitnet.convert import convert, set_lambda
    from agent_forge_core.training.distill import DistillSettings, distilled_loss
    from agent_forge_core.training.loop import train
    from agent_forge_core.training.sft_data import batches, task_sequences

    teacher, tok = load_model(str(tiny_model_dir))
    teacher.eval().requires_grad_(False)
    start = copy.deepcopy(teacher)
    convert(start, per_channel=True)
    set_lambda(start, 1.0)
    start.requires_grad_(True)
    batch = next(batches(task_sequences(tok, "arithmetic", 8, 1, 0, 64), 8, tok.pad_token_id, 0))
    runs = {}
    for precision, kernel in (("float32", "sdpa"), ("bfloat16", "eager")):
        model = copy.deepcopy(start)
        with held_weights(teacher, precision):
            stats = train(model, itertools.repeat(batch), 1, 1e-3, 0, loss_fn=distilled_loss(teacher, DistillSettings()),
                          precision=precision, attention=kernel)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert model.config._attn_implementation == "sdpa"
        step = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), start.parameters())])
        runs[precision] = (stats.first_loss, step)
    (l32, d32), (l16, d16) = runs["float32"], runs["bfloat16"]
    assert abs(l16 - l32) < 0.01 * l32
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.95  # Adam's first step: sign-like updates
