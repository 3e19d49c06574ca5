"""Evaluation texts: embedded (offline) texts, `datasets` loaders when online, plain files.

`--dataset` accepts:
  book       Pride and Prejudice (public domain), shipped in the package
  wiki       22 English Wikipedia articles (CC BY-SA), shipped in the package
  wikitext   wikitext-2-raw-v1 test split, joined with blank lines (needs the dataset hub)
  pg19       first book of the PG19 test split (needs the dataset hub)
  PATH       any UTF-8 text file

Tokenization: the tokenizer's default call on the whole text (no special tokens added by us),
then the first N tokens. Step t feeds x_t and scores x_{t+1}, so N tokens give N-1 scored
tokens: x_1 .. x_{N-1}.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_DIR = Path(__file__).parent / "data"
EMBEDDED = {"book": "pride_and_prejudice.txt.gz", "wiki": "enwiki_articles.txt.gz"}
ONLINE = ("wikitext", "pg19")


class DatasetError(ValueError):
    """Unknown or unavailable dataset, or a text too short for the request."""


@dataclass(frozen=True)
class Text:
    name: str  # the --dataset value
    source: str  # where it came from
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def load_text(dataset: str) -> Text:
    if dataset in EMBEDDED:
        blob = (DATA_DIR / EMBEDDED[dataset]).read_bytes()
        return Text(dataset, f"streamllm/data/{EMBEDDED[dataset]}", gzip.decompress(blob).decode("utf-8"))
    if dataset in ONLINE:
        return _load_online(dataset)
    path = Path(dataset).expanduser()
    choices = f"use one of {', '.join([*EMBEDDED, *ONLINE])} or the path of a UTF-8 text file"
    if path.is_file():
        return Text(str(path), str(path.resolve()), _read_text_file(path))
    if path.is_dir():
        raise DatasetError(f"dataset path {dataset!r} is a directory: {choices}")
    if path.suffix or len(path.parts) > 1:  # looks like a path, not a dataset name
        raise DatasetError(f"dataset file {dataset!r} does not exist: {choices}")
    raise DatasetError(f"unknown dataset {dataset!r}: {choices}")


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"dataset file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "convert it (iconv -t UTF-8) or pass another text file"
        ) from None
    except OSError as exc:
        raise DatasetError(f"dataset file {str(path)!r} cannot be read ({exc.strerror}); pass a readable text file") from None


def _load_online(dataset: str) -> Text:
    from . import hub

    if not hub.offline_env() and not hub.reachable():
        raise DatasetError(
            f"dataset {dataset!r} needs the dataset hub, which is not reachable from here. Offline, use --dataset "
            "book or --dataset wiki (embedded) or a text file path; if it is in your datasets cache, set "
            "HF_DATASETS_OFFLINE=1 to load it from there."
        )
    try:
        from datasets import load_dataset

        if dataset == "wikitext":
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
            return Text(dataset, "hf:wikitext/wikitext-2-raw-v1:test", "\n\n".join(rows["text"]))
        # PG19's test books are long (~70k tokens each); the first one covers a 20k-token run.
        rows = load_dataset("emozilla/pg19-test", split="test", streaming=True)
        return Text(dataset, "hf:emozilla/pg19-test:test[0]", next(iter(rows))["text"])
    except Exception as exc:  # noqa: BLE001 - any hub/network failure means the same fix
        raise DatasetError(
            f"dataset {dataset!r} needs the dataset hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Offline, use --dataset book or --dataset wiki (embedded), or a text file path."
        ) from None


def tokenize(tokenizer, text: Text, num_tokens: int) -> torch.Tensor:
    """First `num_tokens` ids of the whole text, shape [num_tokens]."""
    if num_tokens < 2:
        raise DatasetError(f"--tokens must be >= 2 (one token fed, one scored); got {num_tokens}")
    ids = tokenizer(text.text)["input_ids"]
    if len(ids) < 2:
        raise DatasetError(
            f"dataset {text.name!r} has {len(ids)} token(s) with this tokenizer; pass a longer text (at least 2 tokens)"
        )
    if len(ids) < num_tokens:
        raise DatasetError(
            f"dataset {text.name!r} has only {len(ids)} tokens with this tokenizer; ask for --tokens {len(ids)} or fewer"
        )
    return torch.tensor(ids[:num_tokens], dtype=torch.long)


def synthetic_ids(vocab_size: int, num_tokens: int, seed: int = 0) -> torch.Tensor:
    """Random token ids for dummy-weight timing runs (no tokenizer, quality meaningless)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_tokens,), generator=generator)
