"""Convert stored files of an older schema version to the one this checkout reads (issue #28 item 2).

    python scripts/convert_stored_files.py baselines history          # every file under them
    python scripts/convert_stored_files.py baselines/x/book-1024-float32.json

`streamllm.baseline/1` -> /2 (extra's judged sections become fields; tpot_samples_ms, tpot_ms and
extra's unread entries dropped) and `streamllm.history/1` -> /2 (each case's unread verdict dropped).
Each converted file is validated against its model before it replaces the old one (atomically); a
file already at the current version is left alone; anything else is reported and left alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's streamllm, not an installed one

from streamllm.harness.baselines import read_baseline_file  # noqa: E402
from streamllm.harness.schema import BaselineFileModel, HistoryRunModel, StoredFileError, validate_stored  # noqa: E402
from streamllm.harness.schema import baseline as baseline_schema  # noqa: E402
from streamllm.harness.schema import history as history_schema  # noqa: E402
from streamllm.harness.schema.loader import read_json  # noqa: E402
from streamllm.results import write_text_atomic  # noqa: E402

CONVERTERS = {
    "streamllm.baseline/1": (baseline_schema.convert_v1, BaselineFileModel),
    "streamllm.history/1": (history_schema.convert_v1, HistoryRunModel),
}


def convert(path: Path) -> str:
    data = read_json(path)  # raw: an older version is read before any model fits it
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema in (BaselineFileModel.SCHEMA, HistoryRunModel.SCHEMA):
        return "current"
    if schema not in CONVERTERS:
        return f"skipped (schema {schema!r})"
    fn, model = CONVERTERS[schema]
    stored = validate_stored(fn(data), model, path)
    text = stored.to_text() if model is BaselineFileModel else json.dumps(stored.to_json(), indent=1) + "\n"
    write_text_atomic(path, text)
    if model is BaselineFileModel:
        read_baseline_file(path)  # reads back through the store's own reader
    return f"{schema} -> {model.SCHEMA}"


def main(argv: list[str]) -> int:
    paths = [p for arg in argv for p in (sorted(Path(arg).rglob("*.json")) if Path(arg).is_dir() else [Path(arg)])]
    if not paths:
        print("usage: python scripts/convert_stored_files.py PATH [PATH ...]  (files or directories)")
        return 2
    status = 0
    for path in paths:
        try:
            print(f"{path}: {convert(path)}")
        except (StoredFileError, OSError) as exc:  # OSError: the write
            print(f"{path}: not converted: {exc}")
            status = 2
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
