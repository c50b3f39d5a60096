"""Evaluation: metrics equal to the official evaluators, scorers and benchmark runners."""
