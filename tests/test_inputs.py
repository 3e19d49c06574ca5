"""Bad input gets one clear error naming the fix, never silent nonsense (the CLI's side of it,
exit code 2 and one line, is tests/test_cli_errors.py)."""

from __future__ import annotations

import pytest

from streamllm.cli import parse_strategies
from streamllm.data import DatasetError, Text, load_text, tokenize
from streamllm.strategies import StrategyError, make_strategy

DEFAULTS = {"sink": 4, "window": 252, "compress_every": 1, "overlap": 0, "refresh": 0, "auto_cap": None}


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("sliding", {}, "unknown strategy 'sliding'"),
        ("strict", {"window": 0}, "--window must be > 0"),
        ("strict", {"window": -3}, "--window must be > 0"),
        ("strict", {"sink": -1}, "--sink must be >= 0"),
        ("lazy", {"compress_every": 0}, "--compress-every must be >= 1"),
        ("strict", {"compress_every": 4}, "strategy lazy"),
        ("refresh", {"refresh": 0}, "needs a budget"),
        ("overlap", {"overlap": 8, "window": 4, "auto_cap": 8}, "leaves no room"),
        ("window", {"sink": 4}, "keeps no sinks"),
    ],
)
def test_bad_strategy_parameters(name, params, match):
    with pytest.raises(StrategyError, match=match):
        make_strategy(name, **params)


def test_window_beyond_trained_context():
    spec = make_strategy("strict", sink=4, window=2048)
    with pytest.raises(StrategyError, match="exceeds the model's 2048 trained positions.*--allow-beyond-context"):
        spec.validate(max_positions=2048)
    spec.validate(max_positions=2048, allow_beyond_context=True)  # measured on purpose
    make_strategy("strict", sink=4, window=2044).validate(max_positions=2048)


def test_strategy_list_items():
    specs = parse_strategies("dense,strict,lazy:c16,lazy:c32,no-shift,window,refresh:c32:b8", DEFAULTS)
    assert [s.label() for s in specs] == [
        "dense", "strict-s4-w252", "lazy-s4-w252-c16", "lazy-s4-w252-c32", "no-shift-s4-w252",
        "window-s0-w252", "refresh-s4-w252-c32-b8",
    ]
    with pytest.raises(StrategyError, match="bad strategy option 'x9'"):
        parse_strategies("lazy:x9", DEFAULTS)
    with pytest.raises(StrategyError, match="unknown strategy"):
        parse_strategies("strict,bogus", DEFAULTS)


def test_unknown_dataset_and_short_text():
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*book, wiki"):
        load_text("nope")

    class Words:
        def __call__(self, text):
            return {"input_ids": list(range(len(text.split())))}

    with pytest.raises(DatasetError, match="only 3 tokens.*--tokens 3"):
        tokenize(Words(), Text("t", "t", "a b c"), 10)
    assert tokenize(Words(), Text("t", "t", "a b c"), 3).tolist() == [0, 1, 2]
    with pytest.raises(DatasetError, match="has 1 token.*pass a longer text"):
        tokenize(Words(), Text("t", "t", "a"), 2)


def test_text_file_dataset(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("hello streaming world", encoding="utf-8")
    assert load_text(str(path)).text == "hello streaming world"


def test_embedded_texts_ship_with_the_package():
    book, wiki = load_text("book"), load_text("wiki")
    assert book.text.startswith("PRIDE AND PREJUDICE") and len(book.text) == 684_768
    assert wiki.text.lstrip().startswith("= Anarchism =") and len(wiki.text.encode()) == 716_660


def test_online_datasets_fail_fast_offline(monkeypatch):
    from streamllm import hub

    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DatasetError, match="not reachable.*--dataset book"):
        load_text("wikitext")


def test_wikitext_loader_joins_rows(monkeypatch):
    import sys
    import types

    from streamllm import hub

    # `datasets` is the optional [hub] extra: a stand-in module, so the test runs without it.
    datasets = types.ModuleType("datasets")
    monkeypatch.setitem(sys.modules, "datasets", datasets)

    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return {"text": [" = A = \n", " line one\n", ""]}

    datasets.load_dataset = fake_load_dataset
    text = load_text("wikitext")
    assert calls[0][0] == ("wikitext", "wikitext-2-raw-v1") and calls[0][1]["split"] == "test"
    assert text.text == " = A = \n\n\n line one\n\n\n"
