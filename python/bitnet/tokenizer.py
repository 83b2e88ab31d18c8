"""Text in and out: a tokenizer built from a model file, chat templates, incremental decoding.

:class:`Tokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` (the Rust library does the
BPE; nothing here re-implements it). It is built from one of two sources:

* GGUF metadata (``tokenizer.ggml.*``, REFERENCE.md 2.9), translated into a ``tokenizer.json``
  document and handed to ``tokenizers``:

  - model ``gpt2``: byte-level BPE (tokens in GPT-2's byte-to-unicode form + ranked merges).
    The split regex comes from ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZER_REGEX`, the
    patterns llama.cpp uses for the same names; our converter stores any other pattern
    verbatim as ``bitnet_pkg.pre_tokenizer_regex``). Files without the key (bitnet.cpp writes
    none) get the LLaMA-3 pattern when the vocabulary has ``<|begin_of_text|>``, else GPT-2's.
  - model ``llama``: SentencePiece BPE (``▁`` for spaces, ``<0xNN>`` byte fallback). Merges
    come from ``tokenizer.ggml.merges`` when present, else they are derived from the token
    scores as SentencePiece applies them (the pair whose joined piece scores highest first).

  Tokens typed CONTROL (3) or UNKNOWN (2) become special tokens, USER_DEFINED (4) added
  tokens; both are matched verbatim in the text before BPE and never split.
  ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` decide what ``encode`` adds.
* a Hugging Face ``tokenizer.json`` (plus ``tokenizer_config.json`` beside it for the chat
  template and bos/eos when present), used as is.

Which source :meth:`bitnet.BitNet.load_weights` uses: an explicit ``tokenizer=`` argument
first; else the GGUF metadata (the single source of truth when the file carries a
vocabulary); else a ``tokenizer.json`` in the model file's directory.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._tokens import as_token_array
from .errors import BitNetError, BitNetFormatError, BitNetValueError, ErrorCode

__all__ = ["Tokenizer", "IncrementalDecoder", "PRE_TOKENIZER_REGEX", "TokenType"]

logger = logging.getLogger("bitnet.tokenizer")

PathLike = Union[str, "os.PathLike[str]"]


class TokenType:
    """``tokenizer.ggml.token_type`` values (gguf.md)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: ``tokenizer.ggml.pre`` value -> split regex of the byte-level BPE pre-tokenizer. Names
#: not listed fall back to the GPT-2 pattern with a warning (as llama.cpp does).
PRE_TOKENIZER_REGEX: Dict[str, str] = {
    **{k: _LLAMA3_REGEX for k in ("llama-bpe", "llama3", "llama-v3", "falcon3", "smaug-bpe", "dbrx")},
    **{k: _GPT2_REGEX for k in ("gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion")},
    **{k: _QWEN2_REGEX for k in ("qwen2", "stablelm2", "hunyuan")},
}

_SPACE = "\u2581"     # SentencePiece's visible space


def _raise_exception(message: str) -> None:
    raise BitNetValueError(ErrorCode.INVALID, f"chat template: {message}")


def _tojson(value: Any, indent: Optional[int] = None, ensure_ascii: bool = False) -> str:
    # As transformers does: no HTML escaping (jinja2's builtin tojson escapes <, >, &).
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


class Tokenizer:
    """Text <-> token ids for one model, backed by a ``tokenizers.Tokenizer``.

    Build one with :meth:`from_gguf`, :meth:`from_metadata` or :meth:`from_file`; models
    loaded with :meth:`bitnet.BitNet.load_weights` make theirs on first use
    (``bn.tokenizer``).

    Attributes
    ----------
    backend : tokenizers.Tokenizer
        The underlying tokenizer (for anything not wrapped here).
    bos_token_id, eos_token_id : int or None
        Begin/end-of-sequence ids (None when the source names none).
    add_bos, add_eos : bool
        Whether :meth:`encode` adds them (``add_special_tokens=True``).
    chat_template : str or None
        The Jinja chat template the model carries.
    source : str
        Where the tokenizer came from (a file path and the kind of source), for messages.
    """

    def __init__(self, backend: Any, *, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
                 add_bos: bool = False, add_eos: bool = False, chat_template: Optional[str] = None,
                 source: str = "") -> None:
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.chat_template = chat_template
        self.source = source
        self._template_cache: Dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Tokenizer vocab={self.vocab_size} from {self.source}>"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gguf(cls, path: PathLike) -> "Tokenizer":
        """The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` metadata.

        Raises :class:`BitNetError` if the file has no vocabulary.
        """
        from . import _core

        f = _core.GGUFFile(path)
        return cls.from_metadata(f.metadata(), source=os.fspath(path))

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], source: str = "GGUF metadata") -> "Tokenizer":
        """Build from a GGUF metadata dict (keys ``tokenizer.ggml.*``; arrays as lists)."""
        model = md.get("tokenizer.ggml.model")
        tokens = md.get("tokenizer.ggml.tokens")
        if model is None or not tokens:
            raise BitNetError(ErrorCode.STATE, f"no tokenizer in {source} (no tokenizer.ggml.tokens); pass "
                              "tokenizer=PATH/tokenizer.json, or convert the model with its tokenizer.json")
        types = md.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise BitNetFormatError(ErrorCode.FILE, f"{source}: tokenizer.ggml.token_type has {len(types)} entries "
                                    f"for {len(tokens)} tokens")
        merges = md.get("tokenizer.ggml.merges")
        if model == "gpt2":
            doc = _gpt2_document(md, tokens, types, merges, source)
        elif model == "llama":
            doc = _llama_document(md, tokens, types, merges, source)
        else:
            raise BitNetFormatError(ErrorCode.FILE, f"{source}: tokenizer model {model!r} is not supported "
                                    "(gpt2 = byte-level BPE, llama = SentencePiece BPE)")
        from tokenizers import Tokenizer as _HF

        try:
            backend = _HF.from_str(json.dumps(doc))
        except Exception as exc:   # tokenizers raises plain Exception subclasses
            raise BitNetFormatError(ErrorCode.FILE, f"{source}: the tokenizer metadata is inconsistent ({exc})") from exc
        n = len(tokens)

        def tid(key: str) -> Optional[int]:
            v = md.get(key)
            return int(v) if isinstance(v, int) and 0 <= v < n else None

        bos, eos = tid("tokenizer.ggml.bos_token_id"), tid("tokenizer.ggml.eos_token_id")
        add_bos = md.get("tokenizer.ggml.add_bos_token")
        if not isinstance(add_bos, bool):
            add_bos = model == "llama" and bos is not None    # llama.cpp's default for SPM vocabularies
        add_eos = md.get("tokenizer.ggml.add_eos_token") is True
        return cls(backend, bos_token_id=bos, eos_token_id=eos, add_bos=add_bos and bos is not None,
                   add_eos=add_eos and eos is not None, chat_template=md.get("tokenizer.chat_template"),
                   source=f"{source} (GGUF {model})")

    @classmethod
    def from_file(cls, path: PathLike) -> "Tokenizer":
        """Load a Hugging Face ``tokenizer.json`` (or a directory holding one).

        ``tokenizer_config.json`` beside it, when present, supplies ``chat_template``,
        ``bos_token``/``eos_token`` and ``add_bos_token``. Bos/eos are added the way the
        ``tokenizer.json`` post-processor says.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            from .errors import BitNetFileNotFoundError

            raise BitNetFileNotFoundError(ErrorCode.FILE, f"{p}: no such tokenizer file (it does not exist)")
        from tokenizers import Tokenizer as _HF

        try:
            backend = _HF.from_file(str(p))
        except Exception as exc:
            raise BitNetFormatError(ErrorCode.FILE, f"{p}: not a valid tokenizer.json ({exc})") from exc
        cfg: Dict[str, Any] = {}
        cfg_path = p.with_name("tokenizer_config.json")
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except ValueError:
                logger.warning("%s: invalid JSON; ignored", cfg_path)

        def token_of(key: str) -> Optional[int]:
            v = cfg.get(key)
            if isinstance(v, dict):
                v = v.get("content")
            return backend.token_to_id(v) if isinstance(v, str) else None

        template = cfg.get("chat_template")
        if isinstance(template, list):     # the named-template form: take "default"
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        tok = cls(backend, bos_token_id=token_of("bos_token"), eos_token_id=token_of("eos_token"),
                  add_bos=False, add_eos=False, chat_template=template if isinstance(template, str) else None,
                  source=f"{p} (tokenizer.json)")
        tok._post_processor_adds = True
        return tok

    _post_processor_adds = False   # from_file: the tokenizer.json post-processor adds bos/eos itself

    # ------------------------------------------------------------------ encode / decode
    @property
    def vocab_size(self) -> int:
        """Number of token ids (including added tokens)."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of a token string (in the vocabulary's own spelling), or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> Optional[str]:
        """The vocabulary string of ``token_id``, or None."""
        return self.backend.id_to_token(int(token_id))

    @property
    def bos_token(self) -> Optional[str]:
        return None if self.bos_token_id is None else self.id_to_token(self.bos_token_id)

    @property
    def eos_token(self) -> Optional[str]:
        return None if self.eos_token_id is None else self.id_to_token(self.eos_token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """Token ids of ``text`` as int32; special-token strings in it map to their ids.

        ``add_special_tokens=True`` adds bos (and eos) as the model asks.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        if self._post_processor_adds:
            ids = self.backend.encode(text, add_special_tokens=bool(add_special_tokens)).ids
        else:
            ids = self.backend.encode(text, add_special_tokens=False).ids
            if add_special_tokens:
                if self.add_bos and self.bos_token_id is not None:
                    ids = [self.bos_token_id] + ids
                if self.add_eos and self.eos_token_id is not None:
                    ids = ids + [self.eos_token_id]
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """The text of token ids (multi-byte characters cut by the ids become U+FFFD)."""
        arr = _ids(ids)
        return self.backend.decode(arr.tolist(), skip_special_tokens=bool(skip_special_tokens))

    def incremental_decoder(self, skip_special_tokens: bool = False) -> "IncrementalDecoder":
        """A decoder for streamed ids that never emits half of a multi-byte character."""
        return IncrementalDecoder(self, skip_special_tokens)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            *, chat_template: Optional[str] = None, **kwargs: Any) -> str:
        """Render a conversation with the model's Jinja chat template.

        ``messages`` is a list of ``{"role": ..., "content": ...}`` dicts. The template sees
        ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and ``kwargs``
        (e.g. ``tools``), plus ``raise_exception`` and ``strftime_now`` as in transformers;
        it runs in jinja2's immutable sandbox. Returns the prompt text (encode it with
        :meth:`encode_chat`, which does not add a second bos).

        Raises :class:`BitNetError` when there is no template (pass ``chat_template=``).
        """
        template = chat_template if chat_template is not None else self.chat_template
        if not template:
            raise BitNetError(ErrorCode.STATE, f"no chat template in {self.source}; pass chat_template=... "
                              "(a Jinja string) or convert the model with a tokenizer_config.json that has one")
        if isinstance(messages, Mapping) or not isinstance(messages, (list, tuple)):
            raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m:
                raise BitNetValueError(ErrorCode.INVALID, f"messages[{i}] must be a dict with 'role' and 'content'")
        compiled = self._template_cache.get(template)
        if compiled is None:
            compiled = self._template_cache[template] = _compile_template(template)
        ctx = dict(bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        ctx.update(kwargs)
        return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=bool(add_generation_prompt),
                               **ctx)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    **kwargs: Any) -> np.ndarray:
        """:meth:`apply_chat_template`, then token ids.

        The rendered text is encoded without adding special tokens (templates write their own
        bos); bos is prepended only when the model adds one and the template did not.
        """
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        ids = self.encode(text, add_special_tokens=False)
        if self.add_bos and self.bos_token_id is not None and (ids.size == 0 or ids[0] != self.bos_token_id):
            ids = np.concatenate([np.asarray([self.bos_token_id], dtype=np.int32), ids])
        return ids


def _compile_template(source: str) -> Any:
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:   # pragma: no cover - jinja2 is a dependency
        raise ImportError('chat templates need jinja2: pip install "jinja2>=3"') from exc
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise BitNetValueError(ErrorCode.INVALID, f"chat template does not compile: {exc}") from exc


def _ids(ids: Any) -> np.ndarray:
    if isinstance(ids, (list, tuple)) and len(ids) == 0:
        return np.zeros(0, dtype=np.int32)
    if isinstance(ids, np.ndarray) and ids.size == 0:
        return np.zeros(0, dtype=np.int32)
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):
        ids = ids.detach().cpu().numpy()
    return as_token_array(ids, "ids")


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces without splitting characters.

    Keeps a small window of ids: each :meth:`push` decodes the window with and without the
    new ids and returns the difference, unless the new text ends in U+FFFD (an incomplete
    UTF-8 sequence: a byte-level or byte-fallback token carried only part of a character);
    those ids are held back until later ids complete the character. :meth:`flush` returns
    whatever is still held back (an incomplete character at the very end becomes U+FFFD).
    The concatenated pieces equal :meth:`Tokenizer.decode` of all ids.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = bool(skip_special_tokens)
        self._ids: List[int] = []
        self._prefix = 0     # window start: text of ids[_prefix:_read] was already emitted
        self._read = 0

    def _decode(self, ids: List[int]) -> str:
        return self._tok.backend.decode(ids, skip_special_tokens=self._skip)

    def push(self, ids: Union[int, Iterable[int]]) -> str:
        """Add ids; return the text they complete (possibly "")."""
        if isinstance(ids, (int, np.integer)):
            self._ids.append(int(ids))
        else:
            self._ids.extend(int(i) for i in ids)
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            piece = new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(self._ids)
            return piece
        return ""

    def flush(self) -> str:
        """The held-back text (call once at the end of the stream)."""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text):]


# ---------------------------------------------------------------------------------------------
# GGUF metadata -> tokenizer.json document
# ---------------------------------------------------------------------------------------------

def _added_tokens(tokens: Sequence[str], types: Sequence[int]) -> List[Dict[str, Any]]:
    out = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED):
            out.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": ty != TokenType.USER_DEFINED})
    return out


def _vocab(tokens: Sequence[str]) -> Dict[str, int]:
    vocab: Dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)     # a duplicated string keeps its first id (as llama.cpp does)
    return vocab


def _split_merges(merges: Sequence[str], source: str) -> List[List[str]]:
    out = []
    for k, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2:
            # A token can itself contain a space only in vocabularies that are not byte-level;
            # "a b c" is ambiguous, so such files cannot be represented.
            raise BitNetFormatError(ErrorCode.FILE, f"{source}: tokenizer.ggml.merges[{k}] = {m!r} is not 'A B'")
        out.append(parts)
    return out


def _gpt2_document(md: Mapping[str, Any], tokens: Sequence[str], types: Sequence[int],
                   merges: Optional[Sequence[str]], source: str) -> Dict[str, Any]:
    pre = md.get("tokenizer.ggml.pre")
    if pre is None:
        pre = "llama-bpe" if "<|begin_of_text|>" in tokens else "gpt2"
    regex = md.get("bitnet_pkg.pre_tokenizer_regex") or PRE_TOKENIZER_REGEX.get(pre)
    if regex is None:
        logger.warning("%s: pre-tokenizer %r is not known; using GPT-2's split pattern", source, pre)
        regex = _GPT2_REGEX
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, types),
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": _vocab(tokens), "merges": _split_merges(merges or [], source)},
    }


def _merges_from_scores(tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]) -> List[List[str]]:
    """SentencePiece BPE merges: every split of a piece into two pieces of the vocabulary,
    ranked by the joined piece's score (highest first; ties by id)."""
    vocab = _vocab(tokens)
    ranked: List[Tuple[float, int, str, str]] = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty != TokenType.NORMAL or len(t) < 2:
            continue
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab:
                ranked.append((-float(scores[i]), i, a, b))
    ranked.sort()
    return [[a, b] for _, _, a, b in ranked]


def _llama_document(md: Mapping[str, Any], tokens: Sequence[str], types: Sequence[int],
                    merges: Optional[Sequence[str]], source: str) -> Dict[str, Any]:
    if merges:
        merge_pairs = _split_merges(merges, source)
    else:
        scores = md.get("tokenizer.ggml.scores")
        if not scores or len(scores) != len(tokens):
            raise BitNetFormatError(ErrorCode.FILE, f"{source}: a 'llama' (SentencePiece) vocabulary needs "
                                    "tokenizer.ggml.scores (one per token) or tokenizer.ggml.merges")
        merge_pairs = _merges_from_scores(tokens, types, scores)
    unk_id = md.get("tokenizer.ggml.unknown_token_id")
    if not isinstance(unk_id, int) or not 0 <= unk_id < len(tokens):
        unk_id = next((i for i, ty in enumerate(types) if ty == TokenType.UNKNOWN), None)
    space_prefix = md.get("tokenizer.ggml.add_space_prefix")
    space_prefix = True if not isinstance(space_prefix, bool) else space_prefix
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}
    normalizer = ({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": _SPACE}, replace]}
                  if space_prefix else replace)
    decoders = [{"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if space_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, types),
        "normalizer": normalizer,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": None if unk_id is None else tokens[unk_id],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": _vocab(tokens), "merges": merge_pairs},
    }
