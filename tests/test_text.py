"""Caption codecs (fvlm/text.py): the world's word tokenizer and a loaded LLM's tokenizer with its chat template.

Run: pytest tests/test_text.py
"""

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fvlm.config import ConfigError, load_config
from fvlm.text import CaptionCodec, make_codec
from fvlm.world import VideoWorld, build_tokenizer, encode_caption

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_tokenizer(with_template: bool = True) -> PreTrainedTokenizerFast:
    """A small ByteLevel BPE with ChatML specials (eos = pad = <|im_end|>, as SmolLM2-Instruct)."""
    corpus = ["red green blue yellow magenta cyan square ring plus x moves up down left right then"] * 20
    corpus += ["Describe the video: the target's colour, its shape and where it moves."] * 5
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    if with_template:
        hf.chat_template = CHATML
    return hf


def test_the_word_codec_is_the_world_grammar():
    codec = CaptionCodec(build_tokenizer(), chat=False)
    toks = codec.encode(["red ring moves up then left", "blue x moves down"])
    assert toks["input_ids"][0].tolist() == encode_caption("red ring moves up then left")
    assert toks["loss_mask"][1].tolist() == [0, 1, 1, 1, 1, 1, 0, 0]  # after <bos>, <eos> included, not pad
    assert (toks["labels"] == toks["input_ids"].masked_fill(toks["loss_mask"] == 0, -100)).all()
    assert codec.answer_text(toks["input_ids"][0], toks["loss_mask"][0]) == "red ring moves up then left"


def test_the_chat_codec_scores_the_answer_only():
    """Issue 8.1: with a pretrained LLM, captions go through its own tokenizer and chat template, and the
    loss covers the answer (and its end-of-turn token), never the prompt."""
    tok = chat_tokenizer()
    codec = CaptionCodec(tok, chat=True)
    toks = codec.encode(["red ring moves up", "cyan plus moves left then down"])
    ids, mask = toks["input_ids"][0], toks["loss_mask"][0]
    text = tok.decode(ids[toks["attention_mask"][0] == 1])
    assert text == (
        "<|im_start|>user\nDescribe the video: the target's colour, its shape and where it moves.<|im_end|>\n"
        "<|im_start|>assistant\nred ring moves up<|im_end|>"
    )
    scored = ids[mask == 1].tolist()
    assert tok.decode(scored) == "red ring moves up<|im_end|>" and scored[-1] == tok.eos_token_id
    assert codec.answer_text(ids, mask) == "red ring moves up"
    assert int(mask[: len(codec._prompt_ids)].sum()) == 0
    # the padded tail is pad and unscored; the two rows differ only in their answers
    assert toks["input_ids"].shape[1] == max(
        len(codec.encode_one(c)[0]) for c in ["red ring moves up", "cyan plus moves left then down"]
    )
    assert codec.special_ids["pad_token_id"] == tok.eos_token_id


def test_make_codec_and_its_errors(tmp_path):
    """A missing tokenizer, one without a chat template for a pretrained LLM, or one larger than the LLM's
    vocabulary is one ConfigError naming the fix."""
    from transformers import LlamaConfig, LlamaForCausalLM

    assert not make_codec(load_config(None, {})).chat  # random init: the world's words
    tok = chat_tokenizer()
    tok.save_pretrained(tmp_path / "chat")
    plain = chat_tokenizer(with_template=False)
    plain.save_pretrained(tmp_path / "plain")

    def tiny_llm(vocab: int):
        shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, num_key_value_heads=1, **shape))

    tiny_llm(len(tok)).save_pretrained(tmp_path / "llm")
    small = tiny_llm(100)
    small.save_pretrained(tmp_path / "small")
    ok = make_codec(
        load_config(
            None, {"model.llm_path": str(tmp_path / "llm"), "model.tokenizer_path": str(tmp_path / "chat")}
        )
    )
    assert ok.chat and ok.vocab_size == len(tok)
    cases = [
        ({"model.llm_path": str(tmp_path / "llm")}, "no tokenizer at"),  # the LLM folder has none
        (
            {"model.llm_path": str(tmp_path / "llm"), "model.tokenizer_path": str(tmp_path / "plain")},
            "no chat template",
        ),
        (
            {"model.llm_path": str(tmp_path / "small"), "model.tokenizer_path": str(tmp_path / "chat")},
            "do not belong together",
        ),
    ]
    for over, expected in cases:
        with pytest.raises(ConfigError, match=expected) as e:
            make_codec(load_config(None, over))
        assert "\n" not in str(e.value)


def test_the_blind_bound_counts_the_codec_s_tokens():
    """The no-vision bound is the caption's entropy over the expected number of scored tokens: 5 + 2p word
    tokens with the world's words; with a chat template the same entropy over more (BPE) tokens."""
    cfg = load_config(None, {"world.val_size": 16}).world
    words = VideoWorld(cfg)
    p = cfg.turn_prob
    entropy = math.log(6) + 2 * math.log(4) + p * math.log(2) - (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert words.blind_entropy() == pytest.approx(entropy / (5 + 2 * p))
    chat = VideoWorld(cfg, CaptionCodec(chat_tokenizer(), chat=True))
    probs = chat.captions_with_probabilities()
    assert sum(q for _, q in probs) == pytest.approx(1.0)
    scored = sum(q * sum(chat.codec.encode_one(c)[1]) for c, q in probs)
    assert chat.blind_entropy() == pytest.approx(entropy / scored) and scored != 5 + 2 * p
    assert chat.text_length == max(len(chat.codec.encode_one(c)[0]) for c, _ in probs)
    batch = chat.batch("train", range(4))
    assert batch["input_ids"].shape[1] <= chat.text_length and torch.all(batch["loss_mask"].sum(1) >= 3)


def test_slot_accuracy_reads_bpe_words_at_their_positions():
    """With a BPE tokenizer a word spans several tokens: a slot is right when all of them are."""
    world = VideoWorld(
        load_config(None, {"world.val_size": 16}).world, CaptionCodec(chat_tokenizer(), chat=True)
    )
    b = world.batch("train", range(16))
    vocab = world.vocab_size
    perfect = torch.nn.functional.one_hot(torch.roll(b["input_ids"], -1, dims=1), vocab).float()
    assert all(v == 1.0 for v in world.slot_accuracy(perfect, b).values())
    copier = torch.nn.functional.one_hot(b["input_ids"], vocab).float()
    acc = world.slot_accuracy(copier, b)
    assert acc["colour"] == 0.0 and acc["caption"] == 0.0
    # one wrong sub-word token of the colour word makes the colour wrong, nothing else
    first = (b["loss_mask"][:, 1:] == 1).int().argmax(1)  # the first scored position (the colour's 1st token)
    broken = perfect.clone()
    broken[torch.arange(16), first] = torch.nn.functional.one_hot(torch.full((16,), 0), vocab).float()
    acc = world.slot_accuracy(broken, b)
    assert acc["colour"] == 0.0 and acc["shape"] == 1.0 and acc["dir1"] == 1.0
