"""Task heads, each beside its criterion (installed as tpo.heads)."""
