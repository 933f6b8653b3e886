"""Speed benchmarks of the SRGAN training steps (`python -m benchmarks`), above srgan_jax."""
