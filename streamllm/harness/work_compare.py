"""The work-count check: counts measured now against the stored ones, exactly (`compare_counts`),
or across a torch / transformers release through the reference arm (`compare_across_software`).
The counts themselves and their diff are `workrecord.WorkCounts`."""

from __future__ import annotations

from dataclasses import dataclass

from .verdicts import FAIL, NOT_CHECKED, PASS
from .workrecord import WorkCounts


@dataclass(frozen=True)
class CountVerdict:
    verdict: str  # "pass" | "fail" | "not checked"
    message: str
    lines: list[str]  # the diff, empty on pass

    @property
    def passed(self) -> bool:
        return self.verdict == PASS



def compare_counts(measured: WorkCounts, stored: WorkCounts | None, *, label: str = "work counts",
                   source: str | None = None) -> CountVerdict:
    """Exact comparison: any difference fails, with the histogram diff in the message.

    Not checked (never a pass): no stored counts, or stored under another key (the differing
    fields are named). Kernel counts are compared only when both keys name the same GPU.
    """
    where = f" [stored: {source}]" if source else ""
    if stored is None:
        return CountVerdict(NOT_CHECKED, f"{label}: no stored counts for this key: not checked{where}", [])
    if measured.key is not None and stored.key is not None and measured.key.id != stored.key.id:
        changes = "; ".join(measured.key.differences(stored.key))
        return CountVerdict(NOT_CHECKED, f"{label}: stored for another key ({changes}): not checked{where}", [])
    theirs = stored
    if measured.key is not None and stored.key is not None and measured.key.kernel_id != stored.key.kernel_id:
        # Same software, another GPU model: ops are comparable, kernels are not.
        theirs = stored.without_kernels()
    lines = measured.diff(theirs)
    if not lines:
        return CountVerdict(PASS, f"{label}: identical ({measured.summary()}){where}", [])
    return CountVerdict(FAIL, f"{label} changed: " + "; ".join(lines) + where, lines)


def compare_across_software(measured: WorkCounts, stored: WorkCounts, *, measured_reference: WorkCounts | None,
                            stored_reference: WorkCounts | None, label: str = "work counts",
                            source: str | None = None) -> CountVerdict:
    """Counts of the same workload recorded under another torch / transformers release.

    Identical counts pass. Otherwise the release may have changed the model's forward (an extra
    view in its attention, a new mask op), which is not ours to fail on, or our code may have
    changed: the strategy's own work, the case minus its reference arm (transformers'
    DynamicCache at the same length, counted in the same process), separates the two. It must be
    identical to the recorded case minus the recorded reference; the message names what the
    release moved in both arms. Without reference counts on either side: not checked.
    """
    where = f" [stored: {source}]" if source else ""
    moved = "; ".join(measured.key.differences(stored.key)) if measured.key and stored.key else "other software"
    same_gpu = bool(measured.key and stored.key and measured.key.fields.get("gpu") == stored.key.fields.get("gpu"))
    theirs = stored if same_gpu else stored.without_kernels()
    lines = measured.diff(theirs)
    if not lines:
        return CountVerdict(PASS, f"{label}: identical to the counts recorded with {moved} "
                                    f"({measured.summary()}){where}", [])
    if measured_reference is None or stored_reference is None:
        return CountVerdict(NOT_CHECKED, f"{label}: recorded with {moved} and different now ({'; '.join(lines[:3])}); "
                                           "no reference-arm counts on both sides to tell the release's change from ours: "
                                           f"not checked (record this release with --append-baselines){where}", lines)
    theirs_ref = stored_reference if same_gpu else stored_reference.without_kernels()
    own = measured.minus(measured_reference).diff(theirs.minus(theirs_ref))
    if not own:
        return CountVerdict(PASS, f"{label}: the strategy's own work (case minus reference arm) is identical to the "
                                    f"recording with {moved}; the release changed both arms alike: "
                                    f"{'; '.join(lines[:3])}{where}", [])
    return CountVerdict(FAIL, f"{label} changed beyond the reference arm (recorded with {moved}): "
                                + "; ".join(own) + where, own)


