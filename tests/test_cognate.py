import copy

import pytest
import torch

from agent_forge_core.context import make_context
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on
from agent_forge_core.training.lora import lora_config, merge_lora, train_lora
from agent_forge_core.training.sft_data import batches, task_sequences


def test_merged_adapter_equals_peft_model(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    original = copy.deepcopy(model)
    seqs = task_sequences(tok, "recall", 32, 1, 0, 128)
    peft_model, stats = train_lora(model, lora_config(4, 8, 0.0, ["q_proj", "v_proj", "down_proj"]),
                                   batches(seqs, 4, tok.pad_token_id, 0), steps=5, lr=1e-2, warmup=1)
    ids = torch.tensor([seqs[0][0]])
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        merged = merge_lora(peft_model)
        assert type(merged).__name__ == "LlamaForCausalLM" and not hasattr(merged, "peft_config")
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)
        # and the adapter did change the model
        assert (original(input_ids=ids).logits - adapted).abs().max() > 1e-3
    assert stats.trainable_params > 0 and stats.steps == 5


def test_each_cognate_improves_its_focus_metric(tiny_settings):
    s = tiny_settings("cognate.steps=100", "cognate.lr=0.01", "cognate.batch_size=8", "eval.n_examples=16",
                      "cognate.replay=0")  # pure focus training: its specialization is what is checked
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    res = run_stage_on("cognate", base.outputs, ctx)
    b = base.metrics[base.outputs[0]]
    by_focus = {res.info[k]["focus"]: res.metrics[k] for k in res.outputs}
    assert set(by_focus) == {"reasoning", "memory", "language"}
    # A random-init tiny model answers nothing correctly, so the focus signal is the held-out NLL.
    # Each cognate beats the base on its focus metric, and beats the other cognates on it (specialization).
    focus_metric = {"reasoning": "arithmetic_nll", "memory": "recall_nll", "language": "perplexity"}
    for focus, metric in focus_metric.items():
        assert by_focus[focus][metric] < 0.97 * b[metric], (focus, metric, by_focus[focus][metric], b[metric])
        others = [by_focus[o][metric] for o in by_focus if o != focus]
        assert by_focus[focus][metric] < min(others), (focus, metric)
    # each is its own checkpoint whose manifest records its lineage, focus and training
    for k in res.outputs:
        m = ctx.store.manifest(k)
        assert m.parents == base.outputs and m.info["train"]["last_loss"] < m.info["train"]["first_loss"]
        assert {g["metric"] for g in m.info["gates"]} >= {"perplexity"}
    # a second run reuses the checkpoints without training
    again = run_stage_on("cognate", base.outputs, ctx)
    assert again.reused and again.outputs == res.outputs


def test_replay_swaps_a_share_of_task_sequences_for_held_in_text(tiny_model_dir):
    from agent_forge_core.evals.text import natural_text
    from agent_forge_core.model_io import load_model
    from agent_forge_core.training.sft_data import focus_sequences, with_replay

    _, tok = load_model(str(tiny_model_dir))
    seqs = focus_sequences("memory", tok, 40, 64, 1, 0)
    mixed = with_replay(seqs, tok, 0.25, 64, 99)
    assert len(mixed) == 40 and mixed[:30] == seqs[:30]
    train_text = natural_text("train")
    for ids, labels in mixed[30:]:
        assert labels == ids and tok.decode(ids)[:40] in train_text  # LM windows of held-in text, loss on all
    assert with_replay(seqs, tok, 0.0, 64, 99) == seqs


def test_train_lora_steps_in_the_given_precision_and_attention_kernel(tiny_model_dir):
    """bfloat16 autocast reaches the steps (the losses move at its rounding), eager attention only at float
    rounding; the model's own kernel is put back after training."""
    model, tok = load_model(str(tiny_model_dir))
    seqs = task_sequences(tok, "recall", 16, 1, 0, 64)

    def losses(precision, attention):
        m = copy.deepcopy(model)
        _, stats = train_lora(m, lora_config(4, 8, 0.0, ["q_proj", "v_proj"]), batches(seqs, 4, tok.pad_token_id, 0),
                              steps=2, lr=1e-2, warmup=0, precision=precision, attention=attention)
        assert m.config._attn_implementation == model.config._attn_implementation
        return stats.first_loss, stats.last_loss

    plain = losses("float32", None)
    assert losses("float32", "eager") == pytest.approx(plain, rel=1e-5)
    bf16 = losses("bfloat16", "eager")
    assert bf16 != plain and bf16 == pytest.approx(plain, rel=0.05)
