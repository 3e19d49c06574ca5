"""The (b) device-time judge: a CUDA-graph row's per-round device times against the per-process
device times stored for its GPU model and software, by the ratio's statistic and prediction band."""

from __future__ import annotations

import numpy as np

from .band_prior import Prior
from .band_rows import stored_runs
from .bands import guards, mde90, prediction_band
from .judge_lookup import Lookup, relative
from .judge_ratio import band_verdict, check_ratio, ratio_ci
from .records import Check
from .verdicts import DEVICE_TIME_CHECK, ERROR, MUST_CATCH, NOT_APPLICABLE, NOT_CHECKED, RECORDED, aa_band


def check_device_time(samples: list[float] | None, found: Lookup, *, key: str | None, updating: bool, what: str,
                      fallback: float, prior: Prior | None = None, rows: int | None = None) -> Check:
    """(b) device time of a row captured in a CUDA graph, against the per-process device times
    stored for its GPU model and software (`key`: the kernel counts' key). A graph replay is
    device-bound by construction, so its device time reproduces across processes and machines of
    one GPU model and is checked from a machine's first run. The statistic is the ratio's: a
    t-interval on the log of the per-round device times against the stored geometric mean, judged
    by the same prediction band (`prior`: this key's graph rows; `rows`: rows a run judges); rows
    with no spread to learn from keep the named ±`fallback` band."""
    name = DEVICE_TIME_CHECK
    file = relative(found.path)
    if not samples or key is None:
        return Check("tpot", name, NOT_APPLICABLE, f"{what}: no device time measured")
    ci = ratio_ci(samples, [1.0] * len(samples))  # geometric mean (ms) and its CI
    details = {"file": file, "key": key, "device_ms": ci.as_dict()}
    if found.error is not None:
        verdict = RECORDED if updating else ERROR
        return Check("tpot", name, verdict, f"{what}: {found.error}", details)
    runs = stored_runs(found.record, "device_time_ms", key).values if found.record is not None else []
    if not runs:
        verdict = RECORDED if updating else NOT_CHECKED
        return Check("tpot", name, verdict, f"{what}: device time {ci.ratio:.4g} ms [{ci.low:.4g}, {ci.high:.4g}]; "
                     f"no stored device time for this GPU model and software: {verdict} (file {file})", details)
    band = prediction_band(runs, prior, rows or 1)
    if band is None:
        stored = float(np.exp(np.mean(np.log(runs))))
        spread = aa_band([float(r) for r in runs], fallback=fallback)
        verdict = check_ratio(ci, stored, spread.width, label=f"{what}: device ms")
        source = spread.source + "; no stated false-alarm rate"
        details.update({"stored_ms": stored, "stored_runs": runs, "band": spread.width, "band_source": source})
    else:
        mde = mde90(band)
        source = band.source + f"; MDE90 {mde:.1%}" + (" (guards 5 %)" if guards(mde) else "")
        details.update({"stored_ms": band.centre, "stored_runs": runs, "band": band.width, "band_source": source,
                        "prediction": band.as_dict(), "mde90": mde, "guards_5pct": guards(mde)})
        if not band.can_fail:
            verdict_word = RECORDED if updating else NOT_CHECKED
            return Check("tpot", name, verdict_word, f"{what}: device time {ci.ratio:.4g} ms; band {source}: even a "
                         f"{MUST_CATCH:g}x slowdown would pass, so this check cannot fail: {verdict_word}", details)
        verdict = band_verdict(ci, band, label=f"{what}: device ms")
    message = f"{verdict.message} (band {source})"
    if updating:
        return Check("tpot", name, RECORDED, message + "; recorded by this run (--update/--append-baselines)", details)
    return Check("tpot", name, verdict.verdict, message, details)
