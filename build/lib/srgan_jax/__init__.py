"""srgan-jax: SRGAN super-resolution of MNIST digits in JAX/Flax, with an auxiliary classifier loss."""
