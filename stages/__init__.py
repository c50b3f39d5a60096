"""The three training stages as declarative objects (installed as tpo.stages)."""
