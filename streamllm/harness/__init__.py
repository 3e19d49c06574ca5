"""The regression harness: it reads the product's results and judges them.

Work counters, statistics, the same-run ratio, the run history, stored baselines, run records,
verdicts and the report live here. Nothing under `streamllm/` outside this package imports it:
the library decodes and measures, the harness keeps score.
"""
