"""Held-out evaluation (``cyclealign eval``): what to evaluate (:mod:`~cyclealign.evaluation.plan`),
the held-out prompts (:mod:`~cyclealign.evaluation.heldout`), the pairwise judge and win rate
(:mod:`~cyclealign.evaluation.winrate`), reward-model scores (:mod:`~cyclealign.evaluation.reward`),
and the runner that ties them together (:mod:`~cyclealign.evaluation.runner`)."""
