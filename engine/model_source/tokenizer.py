"""Text <-> token ids and chat prompts: a fast `tokenizers` tokenizer plus a Jinja chat template.

Only the `tokenizers` and `jinja2` packages are used here, so loading a tokenizer from a
Hugging Face style directory never imports transformers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

from engine.model_source.errors import ModelSourceError, reason

# The named special tokens Hugging Face passes to chat templates (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _token_content(value: Any) -> str | None:
    """A tokenizer_config special token is a string or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON (as in HF).
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the same sandboxed environment Hugging Face renders it in."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class Tokenizer:
    """A fast (Rust) tokenizer with the model's special tokens, stop ids and chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: dict[str, str] | None = None,
        chat_template: str | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        """`special_tokens` maps names such as "bos_token" to token strings; `eos_token_ids`
        defaults to the id of the eos token."""
        self.backend = backend
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.chat_template = chat_template
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id: int | None = self._id_of("bos_token")
        if eos_token_ids is None:
            eos = self._id_of("eos_token")
            eos_token_ids = [] if eos is None else [eos]
        self.eos_token_ids: list[int] = list(dict.fromkeys(int(i) for i in eos_token_ids))
        self._special_ids = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )
        self._template: jinja2.Template | None = None

    def _id_of(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text are matched as such."""
        ids: list[int] = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; ids outside the vocabulary (a model's padded rows) are dropped."""
        # No clean_up_tokenization_spaces: HF skips it for BPE models, which Llama tokenizers are.
        valid = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        text: str = self.backend.decode(valid, skip_special_tokens=skip_special_tokens)
        return text

    def is_special(self, token_id: int) -> bool:
        """True for added tokens flagged special (control tokens such as <|im_end|>)."""
        return token_id in self._special_ids

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary string of one id (byte-level form for BPE), or None when unknown."""
        token: str | None = self.backend.id_to_token(token_id)
        return token

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """Render a conversation to the prompt string, exactly as HF's apply_chat_template."""
        if self.chat_template is None:
            raise ModelSourceError("this tokenizer has no chat template")
        if self._template is None:
            self._template = compile_chat_template(self.chat_template)
        # HF drops None-valued keys (OpenAI clients send content=None) before rendering.
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        rendered: str = self._template.render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )
        return rendered

    def with_chat_template(self, template: str) -> Tokenizer:
        """A copy that renders chats with `template` (see read_chat_template); this tokenizer
        keeps its own."""
        tok = copy.copy(self)
        tok.chat_template, tok._template = template, None
        return tok

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Read tokenizer.json, tokenizer_config.json (special tokens, chat template) and, when
        present, chat_template.jinja and generation_config.json (extra stop ids)."""
        root = Path(path)
        try:
            backend = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
        except Exception as e:
            raise ModelSourceError(f"cannot read tokenizer from {root}: {reason(e)}") from e
        cfg = read_json_object(root / "tokenizer_config.json")
        special = {n: t for n in SPECIAL_TOKEN_NAMES if (t := _token_content(cfg.get(n)))}
        template = _chat_template(root, cfg)
        tok = cls(backend, special_tokens=special, chat_template=template)
        gen_eos = read_json_object(root / "generation_config.json").get("eos_token_id")
        extra = gen_eos if isinstance(gen_eos, list) else [] if gen_eos is None else [gen_eos]
        tok.eos_token_ids = list(dict.fromkeys([*tok.eos_token_ids, *map(int, extra)]))
        return tok

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (readable by from_dir and by HF)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(root / "tokenizer.json"))
        cfg: dict[str, Any] = {
            **self.special_tokens,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        (root / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def read_chat_template(path: Path) -> str:
    """A Jinja chat template file's text (vLLM's --chat-template); ModelSourceError when it
    cannot be read or does not compile."""
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelSourceError(f"cannot read chat template {path}: {reason(e)}") from e
    try:
        compile_chat_template(template)
    except jinja2.TemplateSyntaxError as e:
        raise ModelSourceError(f"{path}: invalid Jinja chat template: {reason(e)}") from e
    return template


def _chat_template(root: Path, cfg: dict[str, Any]) -> str | None:
    """HF v5 saves chat_template.jinja; older folders keep it in tokenizer_config.json,
    either as a string or as a list of named templates of which "default" is the one used."""
    jinja_file = root / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, {} when the file is absent; ModelSourceError when unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"cannot read {path}: {reason(e)}") from e
    if not isinstance(data, dict):
        raise ModelSourceError(f"cannot read {path}: expected a JSON object")
    return data
