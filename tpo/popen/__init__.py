"""POPEN preference objectives and the preference-based ensemble."""
