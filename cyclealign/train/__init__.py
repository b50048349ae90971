"""Ranking fine-tuning: losses (pure tensor functions) and the TRL-based trainer."""
