"""Benchmarks whose optimum is known, to judge a trained front against (see `stories`)."""
