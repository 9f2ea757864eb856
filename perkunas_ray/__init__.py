"""perkunas_ray: memory-bounded LM training and KV-aware serving on Ray."""

__version__ = "0.1.0"
