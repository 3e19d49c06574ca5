"""The one loader of the harness's stored JSON files (issue #28 item 2).

Every stored file kind is a pydantic model deriving from `StoredModel`: it names its schema
version and the fix a person applies when a file is broken or of another version. `load_stored`
reads a file into its model and turns every way a file can be wrong into one line naming the file
and the fix (`StoredFileError`, a subclass per kind): the CLIs print it and exit 2
(`streamllm.harness.cli.USER_ERRORS`). Reading never writes.
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
    the one version this checkout reads; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, protected_namespaces=())

    SCHEMA: ClassVar[str]  # the version this checkout reads and writes
    KIND: ClassVar[str] = "stored file"
    FIX_BROKEN: ClassVar[str] = "restore it from git (`git checkout -- {path}`)"  # corrupt or edited by hand
    FIX_SCHEMA: ClassVar[str] = FIX_BROKEN  # another version
    ERROR: ClassVar[type[StoredFileError]] = StoredFileError

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
    got = data.get("schema")
    if got != model.SCHEMA:
        what = "no schema field" if got is None else f"schema {got!r}"
        raise fail(f"{what}, this checkout reads {model.SCHEMA!r}", model.FIX_SCHEMA)
    try:
        return model.model_validate_json(json.dumps(data, allow_nan=True))
    except ValidationError as exc:
        raise fail(first_problem(exc), model.FIX_BROKEN) from None


def load_stored(path: str | os.PathLike, model: type[M]) -> M:
    """The file at `path` as `model`. A missing or unreadable file, bytes that are not UTF-8 JSON,
    another schema version or a field that does not fit the model raise `model.ERROR` (one line:
    the file, what is wrong, the fix). Nothing is written."""
    path = Path(path)

    def fail(what: str, fix: str) -> StoredFileError:
        return model.ERROR(f"{path}: {what}: {fix.format(path=path)}")

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise fail("does not exist", "check the path") from None
    except IsADirectoryError:
        raise fail("is a directory", f"pass a {model.KIND}") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror})", "check its permissions") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not JSON (not UTF-8 text at byte {exc.start})", model.FIX_BROKEN) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON (line {exc.lineno}: {exc.msg})", model.FIX_BROKEN) from None
    return validate_stored(data, model, path)
