"""Training: exact response-only masks (`masking`), pair log-probs (`logprobs`), what SFT and DPO
share (`toolkit`), the guarded Trainer classes (`trainer`), SFT and DPO training (`sft`, `dpo`),
the typed jobs that cross process boundaries (`jobs`), `accelerate launch` (`launch`) and the
adapter merge (`merge`).
"""
