"""Evaluation, one model in memory at a time: the metrics (`metrics`), the loop that loads,
measures and unloads each model (`runner`), and lm-evaluation-harness tasks (`lmeval`). The
`evaluate` stage and `selftune evaluate --model` both run `runner.evaluate_models`.
"""
