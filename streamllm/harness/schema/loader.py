"""The one loader of the harness's stored JSON files (issue #28 item 2).

Every stored file kind is a pydantic model deriving from `StoredModel`: it names its schema
version and the fix a person applies when a file is broken or of another version. `load_stored`
reads a file into its model and turns every way a file can be wrong into one line naming the file
and the fix (`StoredFileError`, a subclass per kind): the CLIs print it and exit 2
(`streamllm.harness.cli.USER_ERRORS`). Reading never writes. `read_json` is the text-to-data
step alone, for a reader that must look at the data before choosing a model (a file of an older
version being converted); tests/test_schema_coverage.py keeps every other JSON parse in the
project to a short documented list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class StoredFileError(ValueError):
    """A stored file cannot be used; the message is one line naming the file and the fix."""


class StoredModel(BaseModel):
    """Base of every stored file's model: `schema_version` (stored as `"schema"`) is a Literal of
    the one version this checkout reads; unknown fields are refused. `SCHEMA = None`: a file
    another command writes without a version (`streamllm eval --per-token`), read as it is."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, protected_namespaces=())

    SCHEMA: ClassVar[str | None]  # the version this checkout reads and writes
    KIND: ClassVar[str] = "stored file"
    FIX_BROKEN: ClassVar[str] = "restore it from git (`git checkout -- {path}`)"  # corrupt or edited by hand
    FIX_SCHEMA: ClassVar[str] = FIX_BROKEN  # another version
    ERROR: ClassVar[type[StoredFileError]] = StoredFileError

    @classmethod
    def canonical(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`data` in the one shape the model reads, before the version is checked: a kind that
        converts an older layout on reading (a local file nothing can recreate) or accepts two
        shapes overrides it; committed files convert once instead (scripts/convert_stored_files.py)."""
        return data

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


M = TypeVar("M", bound=StoredModel)


def first_problem(exc: ValidationError) -> str:
    """`where: what (N problem(s))` of a pydantic error, on one line."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "top level"
    return f"{where}: {' '.join(str(first['msg']).split())} ({exc.error_count()} problem(s))"


def validate_stored(data: Any, model: type[M], source: str | os.PathLike) -> M:
    """`data` (parsed JSON) as `model`, or `model.ERROR` naming `source` and the fix."""

    def fail(what: str, fix: str) -> StoredFileError:
        return model.ERROR(f"{source}: {what}: {fix.format(path=source)}")

    if not isinstance(data, dict):
        raise fail(f"not a {model.KIND} (top level is a JSON {type(data).__name__})", model.FIX_BROKEN)
    data = model.canonical(data)
    got = data.get("schema")
    if model.SCHEMA is not None and got != model.SCHEMA:
        what = "no schema field" if got is None else f"schema {got!r}"
        raise fail(f"{what}, this checkout reads {model.SCHEMA!r}", model.FIX_SCHEMA)
    try:
        return model.model_validate_json(json.dumps(data, allow_nan=True))
    except ValidationError as exc:
        raise fail(first_problem(exc), model.FIX_BROKEN) from None


def read_json(path: str | os.PathLike, *, kind: str = "stored file", fix: str = StoredModel.FIX_BROKEN,
              error: type[StoredFileError] = StoredFileError) -> Any:
    """The parsed JSON of the file at `path`: the one place a stored file's text becomes data. A
    missing or unreadable file or bytes that are not UTF-8 JSON raise `error` (one line: the file,
    what is wrong, `fix`). Nothing is written."""
    path = Path(path)

    def fail(what: str, fix: str) -> StoredFileError:
        return error(f"{path}: {what}: {fix.format(path=path)}")

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise fail("does not exist", "check the path") from None
    except IsADirectoryError:
        raise fail("is a directory", f"pass a {kind}") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror})", "check its permissions") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not JSON (not UTF-8 text at byte {exc.start})", fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON (line {exc.lineno}: {exc.msg})", fix) from None


def load_stored(path: str | os.PathLike, model: type[M]) -> M:
    """The file at `path` as `model`. A missing or unreadable file, bytes that are not UTF-8 JSON,
    another schema version or a field that does not fit the model raise `model.ERROR` (one line:
    the file, what is wrong, the fix). Nothing is written."""
    data = read_json(path, kind=model.KIND, fix=model.FIX_BROKEN, error=model.ERROR)
    return validate_stored(data, model, Path(path))
