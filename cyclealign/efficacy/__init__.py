"""Measuring alignment efficacy: black boxes that rank by a known rule, and held-out measures.

A rule black box (:mod:`cyclealign.efficacy.server`) is an OpenAI-compatible chat server that
ranks the responses of a ranker prompt by a known, simple property (:mod:`cyclealign.efficacy.rules`),
so the right ranking is certain; the rules are split into tuning and check rules.
:mod:`cyclealign.efficacy.baseline` is the plain PRO loop CycleAlign is compared with, and its
sweep. :mod:`cyclealign.efficacy.measure` then measures on held-out prompts how far a policy
moved toward that property. ``scripts/bench_efficacy.py`` is the benchmark built on them.
"""
