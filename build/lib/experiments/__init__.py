"""Experiments built on the library: configs from configs/; never imported by srgan_jax."""
