"""Prompt inversion: sample inputs x in proportion to p_prior(x) p(y | x)^beta (task.py)."""
