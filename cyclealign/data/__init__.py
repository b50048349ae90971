"""Prompts: where they come from (:mod:`~cyclealign.data.sources`: JSONL, HF datasets, HH-RLHF),
how a row becomes a prompt (:mod:`~cyclealign.data.rows`) and which prompts a round gets
(:mod:`~cyclealign.data.selection`)."""
