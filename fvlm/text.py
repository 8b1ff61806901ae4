"""Captions as token ids: the world's word tokenizer, or the loaded LLM's own tokenizer and chat template.

    from fvlm.text import make_codec
    codec = make_codec(cfg)                       # from model.llm_path / model.tokenizer_path, else the world's
    toks = codec.encode(["red ring moves up"])    # input_ids, attention_mask, loss_mask, labels (padded)
    codec.answer_text(ids, mask)                  # the scored tokens decoded back to words

Two encodings, one contract (loss_mask is 1 on the tokens the caption loss scores, the model's position j
predicting token j+1; labels are input_ids where loss_mask else -100; padding with the pad id, which may equal
eos as in SmolLM2, so losses never use pad ids):
- plain: ``<bos> caption <eos>``, every token after <bos> scored. The default for random-init LLMs, with the
  world's 19-word WordLevel tokenizer (fvlm.world.build_tokenizer), or any tokenizer without a chat template
  given as model.tokenizer_path.
- chat: the tokenizer's chat template (SmolLM2-Instruct uses ChatML) around a user turn asking for the caption
  and the assistant's answer; only the answer and its end-of-turn token are scored, never the prompt. This is
  what a pretrained LLM (model.llm_path) reads: its own vocabulary, its own format. Feeding it the world's
  word ids would hand it special tokens of its vocabulary (ids 0..18 in SmolLM2's).
The visual tokens come before all text in the LLM input (fvlm/model.py); the prompt follows them.

Encodings are cached per caption string (the world has a few hundred distinct captions), so a tokenizer call is
not on the training step's path. A tokenizer that is missing, larger than the LLM's embedding table, or (with a
pretrained LLM) without a chat template is a ConfigError naming the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fvlm.config import Config, ConfigError

PROMPT = "Describe the video: the target's colour, its shape and where it moves."
TOKEN_KEYS = ("input_ids", "attention_mask", "loss_mask", "labels")


def _ids(encoded) -> list[int]:
    """apply_chat_template returns a list or (transformers 5) a BatchEncoding."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]


class CaptionCodec:
    """Caption strings <-> token tensors for one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer, chat: bool, prompt: str = PROMPT) -> None:
        self.tokenizer = tokenizer
        self.chat = chat
        self.prompt = prompt
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise ConfigError(
                "the tokenizer has neither a pad nor an eos token; set one (pad = eos as in SmolLM2)"
            )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        self._word_cache: dict[tuple[int, ...], list[int | None]] = {}
        if chat:
            user = [{"role": "user", "content": prompt}]
            self._prompt_ids = _ids(
                tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True)
            )

    @property
    def special_ids(self) -> dict[str, int | None]:
        t = self.tokenizer
        return {"bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "pad_token_id": self.pad_id}

    def encode_one(self, caption: str) -> tuple[list[int], list[int]]:
        """(ids, loss mask) of one caption, unpadded."""
        if caption in self._cache:
            return self._cache[caption]
        t = self.tokenizer
        if not self.chat:
            body = t(caption, add_special_tokens=False)["input_ids"]
            ids = [t.bos_token_id, *body, t.eos_token_id]
            mask = [0] + [1] * (len(ids) - 1)
        else:
            turn = [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": caption}]
            ids = _ids(t.apply_chat_template(turn, tokenize=True))
            n = len(self._prompt_ids)
            if ids[:n] != self._prompt_ids:
                raise ConfigError(
                    "the tokenizer's chat template does not start the answer right after the generation prompt; "
                    "use a ChatML-style template (e.g. SmolLM2-Instruct's) or set model.tokenizer_path"
                )
            end = t.eos_token_id
            stop = ids.index(end, n) + 1 if end is not None and end in ids[n:] else len(ids)
            ids = ids[:stop]  # the answer and its end-of-turn token; what the template adds after is not text
            mask = [0] * n + [1] * (stop - n)
        self._cache[caption] = (ids, mask)
        return ids, mask

    def encode(self, captions: list[str], length: int | None = None) -> dict[str, torch.Tensor]:
        """Token tensors [B, S], right-padded to `length` (default: the longest caption of the batch)."""
        enc = [self.encode_one(c) for c in captions]
        width = length or max(len(ids) for ids, _ in enc)
        n = len(enc)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        loss_mask = torch.zeros((n, width), dtype=torch.long)
        for k, (ids, mask) in enumerate(enc):
            input_ids[k, : len(ids)] = torch.tensor(ids)
            attention[k, : len(ids)] = 1
            loss_mask[k, : len(ids)] = torch.tensor(mask)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "loss_mask": loss_mask,
            "labels": input_ids.masked_fill(loss_mask == 0, -100),
        }

    def length(self, captions: list[str]) -> int:
        """The padded length of the longest of `captions` (what FLOPs accounting counts per sample)."""
        return max(len(self.encode_one(c)[0]) for c in captions)

    def word_ids(self, answer: list[int]) -> list[int | None]:
        """For each token of an answer (its scored tokens), the index of the word it belongs to (None for
        tokens that add no word, like the end-of-turn token), from cumulative decoding: any tokenizer, BPE
        included. Cached per answer."""
        key = tuple(answer)
        if key not in self._word_cache:
            special = set(self.tokenizer.all_special_ids)
            out = []
            for i, tok in enumerate(answer):
                n = len(self.tokenizer.decode(answer[: i + 1], skip_special_tokens=True).split())
                out.append(None if tok in special or n == 0 else n - 1)  # a new word or the rest of one
            self._word_cache[key] = out
        return self._word_cache[key]

    def answer_text(self, ids, mask) -> str:
        """The tokens where mask == 1, decoded to text without special tokens (words for slot accuracy)."""
        keep = [int(i) for i, m in zip(ids, mask, strict=True) if int(m) == 1]
        return self.tokenizer.decode(keep, skip_special_tokens=True).strip()


def _llm_vocab(llm_path: str) -> int | None:
    cfg_file = Path(llm_path) / "config.json"
    if not cfg_file.is_file():
        return None
    return int(json.loads(cfg_file.read_text()).get("vocab_size", 0)) or None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"no tokenizer at {path} ({str(e).splitlines()[0][:120]}); set model.tokenizer_path to a folder "
            "saved with save_pretrained (a pretrained LLM's folder usually has one)"
        ) from None


def make_codec(cfg: Config) -> CaptionCodec:
    """The codec a run uses: the LLM's own tokenizer (model.tokenizer_path, else model.llm_path) with its chat
    template when an LLM is loaded; a given tokenizer (plain encoding unless it has a chat template); else the
    world's word tokenizer."""
    m = cfg.model
    if not m.llm_path and not m.tokenizer_path:
        from fvlm.world import build_tokenizer

        return CaptionCodec(build_tokenizer(), chat=False)
    path = m.tokenizer_path or m.llm_path
    tok = load_tokenizer(path)
    chat = bool(getattr(tok, "chat_template", None))
    if m.llm_path:
        if not chat:
            raise ConfigError(
                f"the tokenizer at {path} has no chat template, which a pretrained LLM's captions need; set "
                "model.tokenizer_path to the instruct tokenizer (e.g. SmolLM2-135M-Instruct's)"
            )
        vocab = _llm_vocab(m.llm_path)
        if vocab is not None and len(tok) > vocab:
            raise ConfigError(
                f"the tokenizer at {path} has {len(tok)} tokens but the LLM at {m.llm_path} embeds {vocab}: "
                "they do not belong together; set model.tokenizer_path to the LLM's own tokenizer"
            )
    return CaptionCodec(tok, chat=chat)
