"""streamllm: StreamingLLM-style KV-cache eviction for HuggingFace causal LMs, measured reproducibly.

Data flows one way: model + text -> strategy (cache + transforms) -> evaluator -> result ->
baseline comparison -> report.
"""

__version__ = "0.1.0"
