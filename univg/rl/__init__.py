"""Reinforcement learning for grounding: rewards, the GRPO maths, difficulty weights and rollouts.

- :mod:`~univg.rl.rewards`: rewards as pure functions, registered by name
  (:mod:`~univg.rl.rewards_release`: the release's own; :mod:`~univg.rl.reward_plugins`: rewards
  defined outside univg; :mod:`~univg.rl.reward_args`: the arguments all of them check);
- :mod:`~univg.rl.groups`: the layout of a GRPO batch (groups of G completions);
- :mod:`~univg.rl.loss`: GRPO's advantages and loss as pure tensor functions;
- :mod:`~univg.rl.difficulty`: difficulty weighting (GRPO-Difficulty's phi);
- :mod:`~univg.rl.rollout`: sampling completions and scoring their tokens (log-probs).

The engines that run rollouts for a module, named in YAML, are :mod:`univg.engines`; the
LightningModule that trains with all of this is :class:`univg.modules.GRPOModule`.
"""
