"""lts_jax: Learning To Simulate (Ruiz et al., ICLR 2019) in JAX."""

__version__ = "0.1.0"
