"""Tests for srgan_jax.metrics: PSNR/SSIM wrappers and the Fréchet (digit-FID) pieces."""

import jax
import numpy as np
import pytest

from srgan_jax import metrics


def _images(n=3, h=28, w=28, c=1, seed=0):
  return np.random.default_rng(seed).uniform(0.2, 0.8, (n, h, w, c)).astype(np.float32)


def test_psnr_identical_is_inf_or_large():
  a = _images()
  v = np.asarray(metrics.psnr(a, a))
  assert v.shape == (3,)
  assert np.all(np.isinf(v) | (v > 100))


def test_psnr_constant_offset_is_20db():
  a = _images()
  v = np.asarray(metrics.psnr(a, a + 0.1))
  np.testing.assert_allclose(v, 20.0, atol=1e-3)


def test_psnr_crop_border_and_jit():
  a = _images()
  b = a.copy()
  b[:, :2] += 0.5  # error only in the top border rows.
  assert np.all(np.isinf(np.asarray(metrics.psnr(a, b, crop_border=2))))
  f = jax.jit(metrics.psnr, static_argnames='crop_border')
  np.testing.assert_allclose(np.asarray(f(a, a + 0.1, crop_border=4)), 20.0, atol=1e-3)


def test_ssim_identical_noisy_and_crop():
  a = _images(c=3)
  np.testing.assert_allclose(np.asarray(metrics.ssim(a, a)), 1.0, atol=1e-5)
  noisy = np.clip(a + np.random.default_rng(1).normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
  v = np.asarray(metrics.ssim(a, noisy))
  assert v.shape == (3,) and np.all(v < 0.99) and np.all(v > -1)
  vc = np.asarray(metrics.ssim(a, noisy, crop_border=4))  # 20x20 after cropping.
  assert vc.shape == (3,) and np.all(vc < 0.99)
  f = jax.jit(metrics.ssim, static_argnames='crop_border')
  np.testing.assert_allclose(np.asarray(f(a, noisy, crop_border=4)), vc, atol=1e-5)
  with pytest.raises(ValueError):
    metrics.ssim(a, a, crop_border=9)  # 10x10 < 11x11 window.


def _fid(a, b):
  """digit-FID as evaluate computes it: streamed moments of each feature set."""
  stats = [metrics.FeatureMoments().update(x).statistics() for x in (a, b)]
  return metrics.frechet_distance(*stats[0], *stats[1])


def test_frechet_self_is_zero():
  f = np.random.default_rng(0).normal(size=(500, 16))
  assert _fid(f, f) < 1e-6


def test_frechet_grows_with_noise():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(2000, 8))
  noise = rng.normal(size=f.shape)
  values = [_fid(f, f + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
  assert values[0] < 1e-6
  assert all(x < y for x, y in zip(values, values[1:])), values


def test_frechet_diagonal_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_general_matches_eig_reference():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  s1, s2 = a @ a.T, b @ b.T
  # Reference: eigenvalues of S1 S2 are real and >= 0.
  ref_tr = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
  assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(ref_tr, rel=1e-8)


def test_frechet_singular_covariances():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(5, 32))  # n < d: rank-deficient covariance.
  assert _fid(f, f) < 1e-6


def test_feature_moments_match_numpy():
  rng = np.random.default_rng(0)
  batches = [rng.normal(3.0, 2.0, size=(n, 10)) for n in (7, 32, 1, 20)]
  acc = metrics.FeatureMoments()
  for b in batches:
    acc.update(b.astype(np.float32))
  allf = np.concatenate([b.astype(np.float32) for b in batches]).astype(np.float64)
  mu, sigma = acc.statistics()
  assert acc.count == len(allf)
  np.testing.assert_allclose(mu, allf.mean(0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(allf, rowvar=False), rtol=1e-9, atol=1e-10)


def test_feature_moments_mask():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(16, 4))
  mask = np.arange(16) < 11
  acc = metrics.FeatureMoments(dim=4).update(f, mask=mask)
  mu, sigma = acc.statistics()
  np.testing.assert_allclose(mu, f[:11].mean(0))
  np.testing.assert_allclose(sigma, np.cov(f[:11], rowvar=False), atol=1e-12)
