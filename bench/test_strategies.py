"""Every strategy a benchmark: PPL, TPOT and findings asserted against stored baselines.

Parameterized by the top-level conftest.py over (strategy, dataset) from --strategies and
--dataset. Each test measures once and asserts three things, reporting which failed and by
how much (bench/checks.py):
  (a) PPL vs the stored baseline (and the timed decode agrees with the scored evaluator),
  (b) TPOT vs the stored baseline of this hardware fingerprint,
  (c) findings vs the reference strategy measured in the same run.
"""

from __future__ import annotations

import warnings

import pytest

from streamllm.harness.verdicts import INCONCLUSIVE, BaselineNotChecked, VerdictInconclusive


def test_strategy(bench_suite, bench_case, bench_dataset, benchmark):
    from bench.catalog import unavailable_reason
    from bench.run_record import UnrecordableCaseError
    from streamllm.data import DatasetError
    from streamllm.decode_slice import SliceTooShortError
    from streamllm.models import ModelUnavailableError
    from streamllm.schedule import TextTooShortError

    reason = unavailable_reason(bench_case, bench_suite.options.device_type) or bench_suite.too_short(bench_case)
    if not reason:
        try:  # wikitext / pg19 need the dataset hub, hub models need the hub or a local copy
            bench_suite.text(bench_dataset)
        except (DatasetError, ModelUnavailableError) as exc:
            reason = str(exc)
    if reason:
        bench_suite.skip_case(bench_case, bench_dataset, reason)
        pytest.skip(f"{bench_case.id}: {reason}")
    try:
        result = bench_suite.run_case(bench_case, bench_dataset, benchmark)
    except (SliceTooShortError, TextTooShortError) as exc:
        # one line naming the text, the need and the fix, not a traceback from inside the timing
        bench_suite.skip_case(bench_case, bench_dataset, str(exc))
        pytest.fail(f"{bench_case.id} on {bench_dataset}: text too short: {exc}", pytrace=False)
    except UnrecordableCaseError as exc:  # its row is in the run; only its baseline entry is kept as it was
        pytest.fail(str(exc), pytrace=False)
    for check in result.checks:
        if check.unchecked:
            warnings.warn(BaselineNotChecked(check.message), stacklevel=1)
        elif check.verdict == INCONCLUSIVE:
            warnings.warn(VerdictInconclusive(f"{check.name}: {check.message}"), stacklevel=1)
    failed = [c for c in result.checks if c.failed]
    if failed:
        pytest.fail("\n".join(f"{c.name} FAILED: {c.message}" for c in failed), pytrace=False)
