"""Findings: what the log (and this machine) established, encoded as bands the suite checks.

A finding relates a strategy to a reference strategy *measured in the same run* (same model,
text and tokens): PPL_s / PPL_ref from a paired block bootstrap over per-token NLL
(`streamllm.stats.ppl_ratio_ci`), or TPOT_s / TPOT_ref from the bootstrap ratio of per-cycle
TPOT samples. Each has a direction and a band; a CI outside the band fails on either side (an
improvement beyond the band means the finding changed: re-record it on purpose, here).

Two families:
- EMBEDDED: measured here on the embedded default (SmolLM2-135M-Instruct, fp32, CPU, S=4,
  W=124, 1024 tokens of book and wiki; parallel evaluator). They apply only to that geometry.
- PYTHIA: the log's Pythia-2.8b numbers (A800, PG19 20k / wikitext 4k) as expectations for
  that configuration; checked when someone runs EleutherAI/pythia-2.8b with hub access (the
  INT8 timing one also on the dummy-weight Pythia config, since it is about speed only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamllm.stats import Finding

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
MEASURED_HERE = (
    "measured here 2026-11-22 on the embedded default (SmolLM2-135M fp32 CPU, S=4 W=124, 1024 tokens, "
    "parallel evaluator): {numbers}"
)


@dataclass(frozen=True)
class FindingSpec:
    finding: Finding
    case: str  # the strategy the finding is about (BenchCase.id)
    reference: str  # the strategy it is measured against, in the same run
    models: tuple[str, ...]  # LoadedModel.name values it applies to ("dummy:" prefix included)
    datasets: tuple[str, ...] | None = None  # None: any dataset
    geometry: dict = field(default_factory=dict)  # required sink/window/tokens (empty: any)
    devices: tuple[str, ...] | None = None  # device types (None: any)
    real_weights: bool = True  # PPL findings are meaningless on dummy weights

    def applies(self, *, model: str, dataset: str, sink: int, window: int, tokens: int, device_type: str,
                dummy_weights: bool) -> str | None:
        """None if the finding applies to this run; otherwise why not (shown as n/a)."""
        if model not in self.models:
            return f"finding is for {', '.join(self.models)}"
        if self.real_weights and dummy_weights:
            return "dummy weights: quality findings do not apply"
        if self.datasets is not None and dataset not in self.datasets:
            return f"finding is for datasets {', '.join(self.datasets)}"
        if self.devices is not None and device_type not in self.devices:
            return f"finding is for {', '.join(self.devices)}"
        here = {"sink": sink, "window": window, "tokens": tokens}
        differs = {k: (v, here[k]) for k, v in self.geometry.items() if here[k] != v}
        if differs:
            return "measured for " + ", ".join(f"{k}={v[0]} (this run {v[1]})" for k, v in differs.items())
        return None


_EMBEDDED_GEOMETRY = {"sink": 4, "window": 124, "tokens": 1024}
_PYTHIA = ("EleutherAI/pythia-2.8b",)
_LOG = "seed log §{section} (Pythia-2.8b, A800, {data}): {claim}"

FINDINGS: list[FindingSpec] = [
    # -- measured here ------------------------------------------------------------------------
    FindingSpec(
        Finding("attention sinks matter: window-only collapses", "ratio_ppl", 1.5, 4.0, MEASURED_HERE.format(
            numbers="window/strict PPL 2.25x book (CI 1.96-2.51), 2.50x wiki (CI 1.84-3.14)")),
        case="window", reference="strict", models=(EMBEDDED_MODEL,), geometry=_EMBEDDED_GEOMETRY),
    FindingSpec(
        Finding("strict sink+window costs < 20 % PPL vs dense", "ratio_ppl", 1.0, 1.2, MEASURED_HERE.format(
            numbers="strict/dense PPL 1.075x book (CI 1.02-1.13), 1.083x wiki (CI 1.04-1.13)")),
        case="strict", reference="dense", models=(EMBEDDED_MODEL,), geometry=_EMBEDDED_GEOMETRY),
    FindingSpec(
        Finding("lazy c16 costs no PPL when S+W+R fits the trained context", "ratio_ppl", 0.97, 1.02,
                MEASURED_HERE.format(numbers="lazy-c16/strict 1.001x book (CI 0.996-1.006), 0.996x wiki "
                                     "(CI 0.990-1.001); the log's Pythia loss is not reproduced at 8192 "
                                     "trained positions")),
        case="lazy-c16", reference="strict", models=(EMBEDDED_MODEL,), geometry=_EMBEDDED_GEOMETRY),
    FindingSpec(
        Finding("lazy c32 costs no PPL when S+W+R fits the trained context", "ratio_ppl", 0.97, 1.02,
                MEASURED_HERE.format(numbers="lazy-c32/strict 0.993x book (CI 0.987-0.999), 0.990x wiki "
                                     "(CI 0.984-0.996): the extra R-1 recent tokens help slightly")),
        case="lazy-c32", reference="strict", models=(EMBEDDED_MODEL,), geometry=_EMBEDDED_GEOMETRY),
    FindingSpec(
        Finding("refresh by tail re-insertion hurts PPL", "ratio_ppl", 1.05, 1.7, MEASURED_HERE.format(
            numbers="refresh-c32-b8/strict 1.33x book (CI 1.22-1.42), 1.20x wiki (CI 1.09-1.31): the re-inserted "
                    "tokens' positions are wrong under RoPE (token loop)")),
        case="refresh", reference="strict", models=(EMBEDDED_MODEL,), geometry=_EMBEDDED_GEOMETRY),
    FindingSpec(
        Finding("INT8 weight-only v2 is not faster on CPU (eager)", "ratio_tpot", 1.0, None, MEASURED_HERE.format(
            numbers="int8/strict TPOT 2.6x book, 2.6x wiki (234 vs 89 ms, 1 thread): eager INT8 dequantizes "
                    "per call")),
        case="int8", reference="strict", models=(EMBEDDED_MODEL,), devices=("cpu",), real_weights=False),
    # Not encoded: "lazy c32 is faster per token than strict" (0.88-0.92x measured here). The two are
    # timed minutes apart, not interleaved, and on this shared VM the load swings TPOT by more than
    # that (strict 89 ms at load 4, 160 ms at load 9), so the finding failed on noise (2026-11-22).
    # -- the log's Pythia-2.8b numbers, as expectations for that configuration -----------------
    FindingSpec(
        Finding("lazy c32 costs ~6 % PPL (Pythia-2.8b)", "ratio_ppl", 1.02, 1.12, _LOG.format(
            section=5, data="PG19 20k, w2048 s4", claim="R=32 PPL +~6 % (reference not stated; taken as strict)")),
        case="lazy-c32", reference="strict", models=_PYTHIA, datasets=("pg19", "wikitext")),
    FindingSpec(
        Finding("lazy c128 PPL cliff (Pythia-2.8b)", "ratio_ppl", 1.2, 1.5, _LOG.format(
            section=5, data="PG19 20k, w2048 s4", claim="R=128 PPL +34 %")),
        case="lazy-c128", reference="strict", models=_PYTHIA, datasets=("pg19", "wikitext")),
    FindingSpec(
        Finding("refresh tail-insert collapses PPL (Pythia-2.8b)", "ratio_ppl", 1.2, None, _LOG.format(
            section=7, data="wikitext 4k, w2048", claim="refresh re-inserted at the tail: huge PPL drop")),
        case="refresh", reference="strict", models=_PYTHIA, datasets=("pg19", "wikitext")),
    FindingSpec(
        Finding("INT8 weight-only v2 is not faster at batch 1", "ratio_tpot", 0.95, None, _LOG.format(
            section=3, data="A800, batch 1", claim="MLP-only INT8 v2: no TPOT gain, often slower")),
        case="int8", reference="strict", models=(*_PYTHIA, "dummy:pythia-2.8b"), devices=("cuda",),
        real_weights=False),
]


def findings_for(case_id: str) -> list[FindingSpec]:
    return [spec for spec in FINDINGS if spec.case == case_id]
