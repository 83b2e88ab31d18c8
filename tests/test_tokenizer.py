"""Text: tokenizers rebuilt from GGUF metadata, chat templates, incremental decoding, BitNet text API.

The vocabularies are trained inside the tests with the `tokenizers` library (nothing is
downloaded), written as a Hugging Face tokenizer.json beside a random checkpoint, converted to
GGUF, and rebuilt from the GGUF metadata alone; the rebuilt tokenizer must encode exactly as
`tokenizers` does with the original tokenizer.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from bitnet import BitNet, BitNetError  # noqa: E402
from bitnet.convert import convert_hf_to_gguf  # noqa: E402
from bitnet.models import random_hf_checkpoint  # noqa: E402
from bitnet.tokenizer import PRE_TOKENIZER_REGEX, Tokenizer  # noqa: E402

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|reserved_special_token_0|>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs!",
    "BitNet b1.58 uses ternary weights {-1, 0, +1} and 8-bit activations.",
    "In 2024, 1234567 tokens were processed at 3.14159 tokens/s... or was it 42?",
    "def main():\n    return [x ** 2 for x in range(10)]  # squares\n\n\n",
    "Don't, can't, won't; I'm, you're, they've, we'll, she'd. DON'T SHOUT!",
    "Héllo wörld, ça va? Ünïcödé façade naïve café. Straße, Ελληνικά, русский текст.",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "emoji: 😀😃🚀 ✨ 👍🏽 and symbols ∑∫√ € £ ¥",
    "tabs\tand\ttabs, spaces     and\r\nwindows newlines\n\n\nend",
] * 4

TEXTS = [
    "hello world",
    "Hello, World! How's it going?",
    "   leading spaces and trailing   ",
    "multiple\n\nnewlines\r\n and\ttabs\t\t",
    "numbers 1 12 123 1234 12345 3.14159 -42",
    "Don't stop; I'LL go. We've SEEN it",
    "naïve café Straße façade — “quotes” ‘single’",
    "日本語 中文 한국어 mixed with English",
    "emoji 😀 🚀✨ 👍🏽 flags 🇫🇷",
    "code: for (int i = 0; i < n; ++i) { x[i] *= 2; }",
    "a",
    " ",
    "",
    "\n",
    "<|begin_of_text|>Hi<|eot_id|>there<|start_header_id|>user<|end_header_id|>\n\nyo",
    "not special: <|begin_of_text  |> <eot_id>",
]


def _bytelevel_tokenizer(pre: str, vocab_size: int = 480):
    tok = tokenizers.Tokenizer(models.BPE())
    if pre == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_REGEX["llama-bpe"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA3_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    return tok


def _sentencepiece_tokenizer(vocab_size: int = 480):
    """A LLaMA-2-style tokenizer.json: ▁ for spaces, byte fallback <0xNN>, <unk>/<s>/</s>."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tj = json.loads(tok.to_str())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if not t["content"].startswith("<0x")]   # plain pieces
    return tokenizers.Tokenizer.from_str(json.dumps(tj))


def _hf_dir(tmp_path: Path, tok, bos: int, eos: int, tokenizer_config=None) -> Path:
    d = random_hf_checkpoint(tmp_path / "hf", preset="tiny")
    tok.save(str(d / "tokenizer.json"))
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(bos_token_id=bos, eos_token_id=eos)
    (d / "config.json").write_text(json.dumps(cfg))
    if tokenizer_config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return d


@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory):
    """(gguf path, reference tokenizers.Tokenizer) for a byte-level BPE with LLaMA-3 specials."""
    tmp = tmp_path_factory.mktemp("llama3")
    tok = _bytelevel_tokenizer("llama-bpe")
    d = _hf_dir(tmp, tok, bos=0, eos=1, tokenizer_config={
        "add_bos_token": True, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "chat_template": LLAMA3_TEMPLATE})
    out = convert_hf_to_gguf(d, tmp / "llama3.gguf")
    return out, tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# encode equals tokenizers' encode
# ---------------------------------------------------------------------------------------------

def test_llama3_bytelevel_from_gguf_matches_tokenizers(llama3_model):
    path, ref = llama3_model
    tok = Tokenizer.from_gguf(path)
    assert tok.bos_token_id == 0 and tok.add_bos
    for text in TEXTS + CORPUS[:9]:
        ours = tok.encode(text, add_special_tokens=False)
        assert ours.dtype == np.int32
        assert ours.tolist() == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.encode(text).tolist() == ref.encode(text).ids, text       # bos added like the post-processor
        if "<|" not in text:
            assert tok.decode(ours) == text


def test_gguf_metadata_keys(llama3_model):
    from bitnet import _core

    md = _core.GGUFFile(llama3_model[0]).metadata()
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "llama-bpe"
    types = md["tokenizer.ggml.token_type"]
    assert [types[i] for i in range(len(LLAMA3_SPECIALS))] == [3] * len(LLAMA3_SPECIALS)   # CONTROL
    assert md["tokenizer.chat_template"] == LLAMA3_TEMPLATE
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.ggml.eot_token_id"] == 4          # tokenizer_config's eos <|eot_id|>, != config's 1
    assert len(md["tokenizer.ggml.merges"]) > 100


@pytest.mark.parametrize("pre", ["gpt2", "custom"])
def test_other_pretokenizers_match(tmp_path, pre):
    tok = _bytelevel_tokenizer("gpt2")
    if pre == "custom":     # a split regex llama.cpp has no name for: stored verbatim
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}|[^\p{L}\p{N}]+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    d = _hf_dir(tmp_path, tok, bos=0, eos=1)
    path = convert_hf_to_gguf(d, tmp_path / "m.gguf")
    ours = Tokenizer.from_gguf(path)
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=False).tolist() == tok.encode(text, add_special_tokens=False).ids


def test_sentencepiece_from_gguf_matches_tokenizers(tmp_path):
    ref = _sentencepiece_tokenizer()
    d = _hf_dir(tmp_path, ref, bos=1, eos=2)
    path = convert_hf_to_gguf(d, tmp_path / "spm.gguf")
    from bitnet import _core

    md = _core.GGUFFile(path).metadata()
    assert md["tokenizer.ggml.model"] == "llama"
    types = md["tokenizer.ggml.token_type"]
    assert types[0] == 2 and types[1] == 3 and types[2] == 3 and types[3] == 6 and types[3 + 255] == 6
    tok = Tokenizer.from_metadata(md)
    # scores only (as llama.cpp's SentencePiece files have): merges derived from the scores
    no_merges = {k: v for k, v in md.items() if k != "tokenizer.ggml.merges"}
    by_score = Tokenizer.from_metadata(no_merges)
    for text in TEXTS + CORPUS[:9]:
        want = ref.encode(text).ids
        assert tok.encode(text).tolist() == want, text
        assert by_score.encode(text).tolist() == want, text
        if "<|" not in text and text.strip() == text and text:
            assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    # byte fallback: a character outside the trained alphabet becomes its UTF-8 bytes
    ids = tok.encode("\U0001F9EA", add_special_tokens=False).tolist()
    assert [tok.id_to_token(i) for i in ids][-4:] == ["<0xF0>", "<0x9F>", "<0xA7>", "<0xAA>"]


def test_special_tokens_never_split(llama3_model):
    tok = Tokenizer.from_gguf(llama3_model[0])
    ids = tok.encode("a<|eot_id|>b", add_special_tokens=False).tolist()
    assert 4 in ids and ids.count(4) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    assert tok.decode(ids) == "a<|eot_id|>b"


# ---------------------------------------------------------------------------------------------
# chat templates
# ---------------------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Hi there  "},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]


def test_chat_template_renders_like_transformers(llama3_model):
    tok = Tokenizer.from_gguf(llama3_model[0])
    text = tok.apply_chat_template(MESSAGES)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Hi there<|eot_id|>" in text
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=llama3_model[1], bos_token="<|begin_of_text|>",
                                              eos_token="<|eot_id|>")
    hf.chat_template = LLAMA3_TEMPLATE
    for gen in (True, False):
        assert tok.apply_chat_template(MESSAGES, add_generation_prompt=gen) == hf.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=gen)
    ids = tok.encode_chat(MESSAGES)
    assert ids[0] == 0 and ids[1] != 0          # one bos: the template's, not a second one


def test_chat_template_errors(llama3_model):
    tok = Tokenizer.from_gguf(llama3_model[0])
    bad = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}"
    with pytest.raises(ValueError, match="first message must be from the user"):
        tok.apply_chat_template(MESSAGES, chat_template=bad)
    with pytest.raises(ValueError, match="does not compile"):
        tok.apply_chat_template(MESSAGES, chat_template="{% for %}")
    with pytest.raises(TypeError):
        tok.apply_chat_template("hello")
    # the sandbox: no access to Python internals
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        tok.apply_chat_template(MESSAGES, chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    tok.chat_template = None
    with pytest.raises(BitNetError, match="no chat template"):
        tok.apply_chat_template(MESSAGES)


# ---------------------------------------------------------------------------------------------
# incremental decoding
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["emoji 😀🚀 and 日本語, 한국어 텍스트 👍🏽!", "🇫🇷🇩🇪", "naïve — ok"])
def test_incremental_decoder_never_splits_characters(llama3_model, text):
    tok = Tokenizer.from_gguf(llama3_model[0])
    ids = tok.encode(text, add_special_tokens=False).tolist()
    assert len(ids) > len(text.encode("utf-8")) // 4          # byte-level: many characters span several ids
    dec = tok.incremental_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces                                    # some ids only carried part of a character


def test_incremental_decoder_flushes_an_incomplete_tail(llama3_model):
    tok = Tokenizer.from_gguf(llama3_model[0])
    ids = tok.encode("ok 😀", add_special_tokens=False).tolist()
    dec = tok.incremental_decoder()
    out = "".join(dec.push(i) for i in ids[:-1])
    assert out == "ok"
    assert dec.flush() == tok.decode(ids[:-1])[len("ok"):]   # the cut emoji ends as U+FFFD, once


def test_sentencepiece_incremental_decoding(tmp_path):
    ref = _sentencepiece_tokenizer()
    path = convert_hf_to_gguf(_hf_dir(tmp_path, ref, bos=1, eos=2), tmp_path / "spm.gguf")
    tok = Tokenizer.from_gguf(path)
    text = "the fox 😀 sleeps 日本"
    ids = tok.encode(text, add_special_tokens=False).tolist()
    dec = tok.incremental_decoder()
    assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == tok.decode(ids) == text


# ---------------------------------------------------------------------------------------------
# BitNet text API
# ---------------------------------------------------------------------------------------------

def test_bitnet_text_api(llama3_model):
    path, ref = llama3_model
    with BitNet("sim") as bn:
        bn.load_weights(path)
        ids = bn.encode("hello world")
        assert ids.tolist() == ref.encode("hello world").ids
        assert bn.decode(ids, skip_special_tokens=True) == "hello world"
        raw = bn.inference(ids, 24, stop_token_ids=[])
        text = bn.generate_text("hello world", 24, stop_token_ids=[])
        assert text == bn.decode(raw, skip_special_tokens=True)
        pieces = list(bn.stream_text("hello world", 24, stop_token_ids=[]))
        assert "".join(pieces) == text and len(pieces) > 1
        # sampling with a seed is reproducible
        a = bn.generate_text("hello", 16, temperature=0.8, top_k=40, seed=7, stop_token_ids=[])
        assert a == bn.generate_text("hello", 16, temperature=0.8, top_k=40, seed=7, stop_token_ids=[])
        # ids as the prompt
        assert bn.generate_text(ids, 24, stop_token_ids=[]) == text


def test_stop_strings_and_stop_tokens(llama3_model):
    path, _ = llama3_model
    with BitNet("sim") as bn:
        bn.load_weights(path)
        raw = bn.inference(bn.encode("the fox"), 40, stop_token_ids=[]).tolist()
        full = bn.decode(raw, skip_special_tokens=True)
        assert len(full) > 6
        stop = full[len(full) // 2: len(full) // 2 + 3]
        cut = full[: full.index(stop)]
        assert bn.generate_text("the fox", 40, stop=stop, stop_token_ids=[]) == cut
        assert "".join(bn.stream_text("the fox", 40, stop=[stop, "\x00never"], stop_token_ids=[])) == cut
        # a stop token ends the text before it (the token itself is not text)
        k = len(raw) // 2
        t = raw[k]
        first = raw.index(t)
        assert bn.generate_text("the fox", 40, stop_token_ids=[t]) == bn.decode(raw[:first], skip_special_tokens=True)
        with pytest.raises(ValueError, match="stop"):
            bn.generate_text("the fox", 4, stop=[""])


def test_no_tokenizer_is_a_clear_error(tmp_path):
    d = random_hf_checkpoint(tmp_path / "hf", preset="tiny")
    (d / "tokenizer.json").unlink()
    out_dir = tmp_path / "out"
    path = convert_hf_to_gguf(d, out_dir / "bare.gguf")
    with BitNet("sim") as bn:
        bn.load_weights(path)
        with pytest.raises(BitNetError, match=r"no tokenizer in bare.gguf; pass tokenizer="):
            bn.encode("hi")
        bn.inference([1, 2], 2)                      # ids still work
        # a tokenizer.json beside the model file is the fallback
        tok = _bytelevel_tokenizer("llama-bpe")
        tok.save(str(out_dir / "tokenizer.json"))
        bn.load_weights(path)
        assert bn.encode("hello").tolist() == tok.encode("hello").ids
        assert "tokenizer.json" in bn.tokenizer.source
        # an explicit tokenizer= wins
        other = _bytelevel_tokenizer("gpt2", vocab_size=300)
        other.save(str(tmp_path / "other.json"))
        bn.load_weights(path, tokenizer=tmp_path / "other.json")
        assert bn.encode("hello").tolist() == other.encode("hello").ids
        with pytest.raises(TypeError):
            bn.load_weights(path, tokenizer=42)


def test_random_models_tokenizer_matches_its_tokenizer_json(tmp_path):
    d = random_hf_checkpoint(tmp_path / "hf", preset="tiny")
    path = convert_hf_to_gguf(d, tmp_path / "tiny.gguf")
    ref = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    tok = Tokenizer.from_gguf(path)
    for text in TEXTS:
        if "<|" in text:
            continue
        assert tok.encode(text, add_special_tokens=False).tolist() == ref.encode(text).ids, text
        assert tok.decode(tok.encode(text)) == text
