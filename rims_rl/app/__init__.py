"""The application layer: run configs, run directories, training, evaluation, checkpoints, compare, reports.

It sits on top of the library (``rims_rl`` cores, policies, extractors, callbacks), the agents
(``agents``) and the environments (``envs``), and nothing below imports it. ``train.py`` talks only to
this package. See README's "Architecture".
"""
