"""Text prompts (harness/prompts.py): prefix sharing stays exact and lengths match the trace, with the
shipped word list (one token a word) and with a real tokenizer.json (built here with the tokenizers
library, so words split into several tokens and the builder has to fix its counts)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.prompt_words import WORDS
from harness.prompts import TextContext, Words, hash_text, load_tokenizer
from traces.errors import InputError

rounds = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=6)


def _grow(ctx: TextContext, plan, replies=None):
    """Prompts of one agent: each round appends, then the server's reply (text, tokens) or nothing."""
    out = []
    for r, (append, gen, got) in enumerate(plan):
        out.append(ctx.prompt(r, append))
        reply = None if replies is None else " " + " ".join(WORDS[:min(got, gen)]) if min(got, gen) else ""
        ctx.generated(r, gen, reply, None if reply is None else min(got, gen))
    return out


@settings(max_examples=40, deadline=None)
@given(rounds, st.booleans())
def test_an_agents_text_only_grows_by_appends_and_has_the_traces_length(plan, with_replies):
    words = Words()
    prompts = _grow(TextContext(1, 7, words, chat=False), plan, replies=with_replies or None)
    texts = [json.loads(p) for p in prompts]
    for a, b in zip(texts, texts[1:]):
        assert b.startswith(a), "a later prompt does not extend the earlier one"
    expected = 0
    for (append, gen, _), text in zip(plan, texts):
        expected += append
        assert words.count(text) == expected  # each stand-in or short reply is padded to gen_tokens
        expected += gen
    again = [json.loads(p) for p in _grow(TextContext(1, 7, words, chat=False), plan, replies=with_replies or None)]
    assert again == texts, "not deterministic"


@settings(max_examples=30, deadline=None)
@given(rounds)
def test_chat_messages_alternate_and_only_grow(plan):
    words = Words()
    prompts = [json.loads(p) for p in _grow(TextContext(2, 3, words, chat=True), plan, replies=True)]
    for a, b in zip(prompts, prompts[1:]):
        assert b[:len(a)] == a, "earlier messages changed"
    last = prompts[-1]
    assert all(isinstance(m["content"], str) and m["content"] for m in last)
    assert all(m["role"] in ("user", "assistant") for m in last)
    first_user = next((m for m in last if m["role"] == "user"), None)
    if plan[0][0]:
        assert last[0] == first_user, "the first round's prompt is the first (user) message"
    total = sum(a + g for a, g, _ in plan[:-1]) + plan[-1][0]
    assert sum(words.count(m["content"]) for m in last) == total


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=5), st.integers(1, 40), st.integers(1, 200), st.booleans())
def test_a_hash_block_has_the_same_text_wherever_it_recurs(ids, block, length, chat):
    words = Words()
    a = hash_text(1, ids, length, block, words, chat)
    b = hash_text(1, ids + [999], length + block, block, words, chat)
    ta = json.loads(a)[0]["content"] if chat else json.loads(a)
    tb = json.loads(b)[0]["content"] if chat else json.loads(b)
    covered = min(length, len(ids) * block)  # past the hash ids a prompt is padded: not a shared block
    assert words.count(ta) == length and tb.split()[:covered] == ta.split()[:covered]
    other = json.loads(hash_text(1, [ids[0] + 1000] + ids[1:], length, block, words, False))
    assert other.split()[:min(block, length)] != ta.split()[:min(block, length)], "different blocks, same text"


def make_tokenizer_json(directory) -> Path:
    """A small BPE tokenizer.json trained on a few words: most of the list is several tokens in it."""
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers library (pip install tokenizers)")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(WORDS[i:i + 40]) for i in range(0, 200, 40)] * 20
    tok.train_from_iterator(corpus, trainer)
    path = Path(directory) / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    return make_tokenizer_json(tmp_path_factory.mktemp("tok"))


def test_with_a_tokenizer_appends_have_the_exact_token_count(tokenizer_json):
    tok = load_tokenizer(str(tokenizer_json))
    single = sum(len(tok.encode(" " + w).ids) == 1 for w in WORDS)
    assert 64 <= single < len(WORDS), "the test tokenizer should split some words"
    words = Words(tok)
    ctx = TextContext(5, 1, words, chat=False)
    total = 0
    for r, (append, gen) in enumerate([(300, 40), (17, 3), (1, 1), (250, 0)]):
        text = json.loads(ctx.prompt(r, append))
        total += append
        assert len(tok.encode(text).ids) == total
        ctx.generated(r, gen, None, None)
        total += gen


def test_a_missing_or_broken_tokenizer_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    pytest.importorskip("tokenizers")
    with pytest.raises(InputError) as err:
        load_tokenizer(str(bad))
    assert err.value.field == "endpoint.tokenizer" and "\n" not in err.value.render()
