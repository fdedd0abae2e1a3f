"""The start/end-of-thought tokens.

Two special tokens of the tokenizer that nothing uses (not bos/eos/pad/unk, absent from the chat template)
are reused when there are two: the vocabulary size stays, and so do the embedding shapes the compression
codecs group by 64 (SmolLM2 reuses `<jupyter_script>` and `<empty_output>`). Otherwise
`<|startthought|>` and `<|endthought|>` (the reference's names) are added and the embeddings resized to a
multiple of 64.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

NEW_TOKENS = ("<|startthought|>", "<|endthought|>")
PAD_MULTIPLE = 64


@dataclass(frozen=True)
class ThoughtTokens:
    start: str
    end: str
    start_id: int
    end_id: int
    reused: bool  # True: two unused special tokens of the tokenizer; False: added (vocabulary resized)

    @property
    def ids(self) -> tuple[int, int]:
        return (self.start_id, self.end_id)

    def as_dict(self) -> dict:
        return asdict(self)


def unused_special_tokens(tokenizer) -> list[tuple[int, str]]:
    """Special tokens the tokenizer declares but neither its roles nor its chat template use, by id."""
    used = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else ""
    return sorted(
        (i, t.content) for i, t in tokenizer.added_tokens_decoder.items()
        if t.special and i not in used and t.content not in template
    )


def prepare_tokens(model, tokenizer) -> ThoughtTokens:
    """Pick (or add) the two thought tokens; resizes `model`'s embeddings when tokens are added."""
    free = unused_special_tokens(tokenizer)
    if len(free) >= 2:
        (sid, s), (eid, e) = free[-2], free[-1]
        return ThoughtTokens(s, e, sid, eid, reused=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(NEW_TOKENS)})
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=PAD_MULTIPLE, mean_resizing=False)
    sid, eid = tokenizer.convert_tokens_to_ids(list(NEW_TOKENS))
    return ThoughtTokens(NEW_TOKENS[0], NEW_TOKENS[1], sid, eid, reused=False)
