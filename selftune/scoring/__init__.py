"""Scorers: map (prompt record, completion) to a score in [0, 1] plus per-check details.

- `constraint.ConstraintScorer` (default): the prompt's verifiable constraints; score = share
  passed, pass = all passed.
- `judge.JudgeScorer`: an LLM judge with a rubric, k samples averaged; the policy itself can judge
  (as in Self-Rewarding LMs) by handing it the policy's generator.
- `reward_model.RewardModelScorer`: a sequence-classification reward model; sigmoid of its logit.

`registry.make_scorer(cfg, generator)` builds the configured one; `registry.score_samples` turns
answers into sample records. To add a scorer: a class with `score(prompt, completions)` in a
module of its own here, its kind in `config.sections.ScorerSection`, and a line in `make_scorer`.

Usage:
    scorer = ConstraintScorer()
    [result] = scorer.score(prompt_record, ["all lowercase answer"])
    result.score, result.passed, result.checks     # 1.0, True, {'lowercase': True}
"""
