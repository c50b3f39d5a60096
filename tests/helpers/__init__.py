"""Helpers shared by tests (toy models and data for the engine)."""
