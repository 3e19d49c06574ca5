"""Re-judge stored run records with the judges of a checkout: the same measurements through old and
new code give the same verdicts, or show exactly where a deliberate rule change moved one.

    python scripts/replay_verdicts.py --checkout DIR --runs-from REV [--paths GLOB] > verdicts.json

DIR is a checkout of streamllm at any commit (its own judges and baselines are imported from it);
the run records are read from git at REV (generated files are not in the tree). For each timed case
the same-run ratio check is re-run on the recorded case and reference samples (rerun samples
included, as the recording process used them), against DIR's baselines. Prints JSON lines
{run, case, dataset, stored, replayed, ratio, band}.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from pathlib import Path


def judges(checkout: Path):
    """(check_ratio_vs_baseline, lookup, BaselineKey, BaselineStore, ratio_key) of that checkout."""
    sys.path.insert(0, str(checkout))
    # An editable install of streamllm resolves `streamllm.*` to its own tree, whatever sys.path
    # says: drop its finder so every module comes from the checkout under test.
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                     and "__editable__" not in repr(f)]
    try:  # the layout since streamllm.harness
        from streamllm.harness.baselines import BaselineKey, BaselineStore
        from streamllm.harness.judges import check_ratio_vs_baseline, lookup
        from streamllm.harness.verdicts import ratio_key
    except ImportError:  # the layout before it
        from bench.checks import check_ratio_vs_baseline, lookup, ratio_key
        from streamllm.baselines import BaselineKey, BaselineStore
    return check_ratio_vs_baseline, lookup, BaselineKey, BaselineStore, ratio_key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", required=True, type=Path)
    parser.add_argument("--runs-from", required=True, help="git revision holding the run records")
    parser.add_argument("--paths", default="reports/*/runs/*.json", help="glob of run records at that revision")
    args = parser.parse_args()
    check, lookup, BaselineKey, BaselineStore, ratio_key = judges(args.checkout.resolve())
    store = BaselineStore(args.checkout / "baselines")
    git = ["git", "-C", str(args.checkout)]
    names = subprocess.run([*git, "ls-tree", "-r", "--name-only", args.runs_from], capture_output=True, text=True,
                           check=True).stdout.split()
    for name in sorted(n for n in names if fnmatch.fnmatch(n, args.paths)):
        run = json.loads(subprocess.run([*git, "show", f"{args.runs_from}:{name}"], capture_output=True, text=True,
                                        check=True).stdout)
        key = ratio_key(run["fingerprint"], run.get("threads") or 1)
        for r in run["results"]:
            stored = next((c for c in r.get("checks") or [] if c["name"] == "(b) TPOT / reference, same run"), None)
            timing, ref = r.get("timing") or {}, r.get("reference_timing") or {}
            if stored is None or stored["verdict"] == "n/a" or not timing.get("samples_ms") or not ref.get("samples_ms"):
                continue
            ev = r["evaluation"]
            bkey = BaselineKey(model=ev["model"], model_revision=ev["model_revision"], dtype=ev["dtype"],
                               dataset=ev["dataset"], dataset_sha256=ev["dataset_sha256"], tokens=ev["tokens"],
                               strategy=r["label"], params=r["params"])
            samples = [*timing["samples_ms"], *(timing.get("rerun_samples_ms") or [])]
            reference = [*ref["samples_ms"], *(ref.get("rerun_samples_ms") or [])]
            replayed = check(samples, reference, lookup(store, bkey), key=key, updating=False, what=r["label"])
            print(json.dumps({"run": Path(name).name, "case": r["case"], "dataset": r["dataset"],
                              "stored": stored["verdict"], "replayed": replayed.verdict,
                              "ratio": round(replayed.details.get("ratio", {}).get("ratio", float("nan")), 4),
                              "band": replayed.details.get("band")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
