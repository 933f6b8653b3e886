"""The seed's networks and training steps in PyTorch, timed on request (benchmarks/compare.py).

The seed notebooks were PyTorch; these modules have the architecture of srgan-jax's (the MNIST
CNN `models.Classifier`, the generator `models.Generator` and the patch `models.Discriminator`
as configs/mnist_srgan.py builds them, VGG19 up to relu3_4) and the seed's parameter counts
(tests/test_compare.py checks them against tests/test_models.py's), and the steps are the
seed's: a train-mode forward pass, `backward()` and `Adam.step()`, in NCHW. Weights are random
(PyTorch's initialisers): the cost of a step does not depend on them.

`python -m benchmarks.torch_reference --which=cnn,generator,gan` builds the steps and then
serves timed runs: each line read from stdin names a step, and one run of `--steps` steps of it
is timed and answered with a line ``torch: <step> <seconds per step>``; a line ``warm <step>
<n>`` runs the step n times untimed and is answered with ``torch: warmed <step> <n>``.
compare.py drives it as a subprocess, so that it can alternate JAX and PyTorch runs while torch
stays an optional dependency that the library (and compare.py) never import.
"""

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Dict, Sequence

import torch
from torch import nn
import torch.nn.functional as F

STEPS = ('cnn', 'generator', 'gan')
PREFIX = 'torch: '
READY = 'torch: ready'
# The steps' batch sizes as the srgan-jax configs set them: configs/classifier.py (the MNIST
# CNN), configs/mnist_srgan.py (the SRResNet pretraining step) and configs/seed_x2_rgb.py.
DEFAULT_BATCH = {'cnn': 128, 'generator': 64, 'gan': 128}
# Adam of the seed (configs/mnist_srgan.py: 8e-5, betas 0.5/0.999); the CNN's default betas.
SEED_ADAM = {'lr': 8e-5, 'betas': (0.5, 0.999)}
# VGG19's convolutions up to conv3_4 (torchvision's vgg19().features[:18]); 'M' a 2x2 max-pool.
VGG19_TO_RELU3_4 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256)


def cores() -> int:
  """The CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


# ---------------------------------------------------------------------------------------------
# The networks.


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, k, stride, padding=k // 2)


class Classifier(nn.Module):
  """The seed's MNIST CNN (`models.Classifier`): conv 32/64-BN-ReLU, pool, conv 128-BN-ReLU,
  pool, dropout, dense 128/64-BN-ReLU with dropout, dense 10."""

  def __init__(self, channels: int = 1, num_classes: int = 10, dropout: float = 0.5):
    super().__init__()
    block = lambda cin, cout: [_conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU()]
    self.features = nn.Sequential(*block(channels, 32), *block(32, 64), nn.MaxPool2d(2),
                                  *block(64, 128), nn.MaxPool2d(2), nn.Flatten())
    self.head = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(7 * 7 * 128, 128), nn.BatchNorm1d(128), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(64, num_classes))

  def forward(self, x):
    return self.head(self.features(x))


class ResidualBlock(nn.Module):
  """conv3x3-BN-PReLU-conv3x3-BN plus identity skip (`models.ResidualBlock`)."""

  def __init__(self, features: int):
    super().__init__()
    self.body = nn.Sequential(_conv(features, features), nn.BatchNorm2d(features), nn.PReLU(),
                              _conv(features, features), nn.BatchNorm2d(features))

  def forward(self, x):
    return x + self.body(x)


class Generator(nn.Module):
  """The seed's GeneratorResNet (`models.Generator` with upsample_batch_norm=True): 9x9 conv +
  PReLU, residual blocks, conv3x3-BN and a long skip, log2(scale) stages of conv3x3 to 4x
  features + BN + pixel shuffle x2 + PReLU, 9x9 conv, tanh."""

  def __init__(self, scale: int = 4, channels: int = 1, num_res_blocks: int = 4,
               features: int = 64):
    super().__init__()
    self.head = nn.Sequential(_conv(channels, features, 9), nn.PReLU())
    self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(num_res_blocks)],
                              _conv(features, features), nn.BatchNorm2d(features))
    stages = []
    for _ in range(scale.bit_length() - 1):
      stages += [_conv(features, 4 * features), nn.BatchNorm2d(4 * features),
                 nn.PixelShuffle(2), nn.PReLU()]
    self.tail = nn.Sequential(*stages, _conv(features, channels, 9), nn.Tanh())

  def forward(self, lr):
    x = self.head(lr)
    return self.tail(x + self.body(x))


class Discriminator(nn.Module):
  """The seed's patch discriminator (`models.Discriminator`, head 'patch'): conv3x3 at stride
  1 and 2 per width, BN (except on the first conv), LeakyReLU(0.2); conv3x3 to one logit per
  patch."""

  def __init__(self, channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512)):
    super().__init__()
    layers, cin = [], channels
    for i, width in enumerate(widths):
      layers += [_conv(cin, width)] + ([nn.BatchNorm2d(width)] if i else [])
      layers += [nn.LeakyReLU(0.2), _conv(width, width, stride=2), nn.BatchNorm2d(width),
                 nn.LeakyReLU(0.2)]
      cin = width
    self.net = nn.Sequential(*layers, _conv(cin, 1))

  def forward(self, x):
    return self.net(x)


class VGG19Features(nn.Module):
  """VGG19 up to relu3_4 (torchvision's vgg19().features[:18]) after ImageNet normalisation of
  images in [-1, 1], as srgan_jax.vgg computes the seed's content features; frozen."""

  def __init__(self):
    super().__init__()
    layers, cin = [], 3
    for v in VGG19_TO_RELU3_4:
      if v == 'M':
        layers.append(nn.MaxPool2d(2))
      else:
        layers += [_conv(cin, v), nn.ReLU()]
        cin = v
    self.features = nn.Sequential(*layers)
    self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
    self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    self.requires_grad_(False)

  def forward(self, images):
    return self.features(((images + 1) / 2 - self.mean) / self.std)


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# The training steps.


@dataclasses.dataclass
class Step:
  """One training step as a call () -> its loss (detached), and the networks it trains."""
  run: Callable[[], torch.Tensor]
  trained: Sequence[nn.Module]

  def __call__(self) -> torch.Tensor:
    return self.run()


def _to(memory_format, x):
  """A module or a 4-d tensor in `memory_format` (NCHW, or NHWC in memory: channels_last)."""
  return x.to(memory_format=memory_format)


def _minimise(opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]):
  """A call () -> loss that takes one step of `opt` on `loss_fn()`, the usual PyTorch way."""
  def step():
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    opt.step()
    return loss.detach()
  return step


def cnn_step(batch: int, memory_format=torch.contiguous_format) -> Step:
  """One step of the MNIST CNN: train mode, cross-entropy, backward, Adam (1x28x28 digits)."""
  model = _to(memory_format, Classifier()).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = _to(memory_format, torch.randn(batch, 1, 28, 28))
  y = torch.randint(0, 10, (batch,))
  return Step(_minimise(opt, lambda: F.cross_entropy(model(x), y)), [model])


def generator_step(batch: int, memory_format=torch.contiguous_format) -> Step:
  """One SRResNet (pretraining) step at x4: 7x7 -> 28x28, 4 blocks, MSE, backward, Adam."""
  g = _to(memory_format, Generator(scale=4)).train()
  opt = torch.optim.Adam(g.parameters(), **SEED_ADAM)
  lr = _to(memory_format, torch.rand(batch, 1, 7, 7) * 2 - 1)
  hr = _to(memory_format, torch.rand(batch, 1, 28, 28) * 2 - 1)
  return Step(_minimise(opt, lambda: F.mse_loss(g(lr), hr)), [g])


def gan_step(batch: int, memory_format=torch.contiguous_format) -> Step:
  """The seed's GAN iteration at x2 (14x14 -> 28x28, 3 channels).

  Generator: L1 between VGG19 relu3_4 features of SR and HR + 1e-3 x LSGAN (MSE of D(SR)
  against 1), backward, Adam. Then the discriminator: LSGAN on D(HR) against 1 and on the
  detached SR against 0, backward, Adam. As in the seed, D runs over SR twice and the G step's
  backward also fills D's parameter gradients, which D's zero_grad then drops.
  """
  g = _to(memory_format, Generator(scale=2, channels=3)).train()
  d = _to(memory_format, Discriminator(channels=3)).train()
  vgg = _to(memory_format, VGG19Features()).eval()
  opt_g = torch.optim.Adam(g.parameters(), **SEED_ADAM)
  opt_d = torch.optim.Adam(d.parameters(), **SEED_ADAM)
  lr = _to(memory_format, torch.rand(batch, 3, 14, 14) * 2 - 1)
  hr = _to(memory_format, torch.rand(batch, 3, 28, 28) * 2 - 1)

  def step():
    opt_g.zero_grad()
    sr = g(lr)
    fake = d(sr)
    content = F.l1_loss(vgg(sr), vgg(hr).detach())
    loss_g = content + 1e-3 * F.mse_loss(fake, torch.ones_like(fake))
    loss_g.backward()
    opt_g.step()
    opt_d.zero_grad()
    real, fake = d(hr), d(sr.detach())
    loss_d = F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake))
    loss_d.backward()
    opt_d.step()
    return (loss_g + loss_d).detach()
  return Step(step, [g, d])


STEP_BUILDERS = {'cnn': cnn_step, 'generator': generator_step, 'gan': gan_step}


def make_steps(which: Sequence[str], batches: Dict[str, int],
               channels_last: bool = False) -> Dict[str, Step]:
  """{name: step} of the named steps at their batch sizes (default: DEFAULT_BATCH)."""
  unknown = [name for name in which if name not in STEP_BUILDERS]
  if unknown:
    raise ValueError(f'unknown steps {unknown}: use some of {STEPS}')
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  return {name: STEP_BUILDERS[name](batches.get(name, DEFAULT_BATCH[name]), memory_format)
          for name in which}


def time_run(step: Step, steps: int) -> float:
  """Seconds per step of one run of `steps` steps (CPU ops are synchronous: the loss's value
  is read at the end, as a sync point)."""
  t0 = time.perf_counter()
  loss = None
  for _ in range(steps):
    loss = step()
  loss.item()
  return (time.perf_counter() - t0) / steps


# ---------------------------------------------------------------------------------------------
# The server compare.py runs.


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The server's command line (argparse, not absl flags: compare.py's flags share names)."""
  parser = argparse.ArgumentParser(prog='python -m benchmarks.torch_reference',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--which', default=','.join(STEPS),
                      help=f'Steps to build, comma-separated: some of {",".join(STEPS)}.')
  parser.add_argument('--steps', type=int, default=3, help='Steps per timed run.')
  parser.add_argument('--warmup', type=int, default=1,
                      help='Untimed steps of each step before the first timed run.')
  for name in STEPS:
    parser.add_argument(f'--{name}_batch', type=int, default=DEFAULT_BATCH[name],
                        help=f'Batch of the {name} step.')
  parser.add_argument('--channels_last', action='store_true',
                      help='NHWC memory format (torch.channels_last) for images and weights.')
  parser.add_argument('--threads', type=int, default=0,
                      help='torch.set_num_threads; 0: one per CPU core.')
  return parser.parse_args(argv)


def serve(steps: Dict[str, Step], num_steps: int, lines, out) -> None:
  """Answers each request read from `lines`: a step's name with one timed run, ``torch:
  <name> <s/step>``; ``warm <name> <n>`` with n untimed steps, ``torch: warmed <name> <n>``."""
  for line in lines:
    request = line.split()
    if not request:
      continue
    name = request[0] if len(request) == 1 else request[1]
    if len(request) == 1 and name in steps:
      print(f'{PREFIX}{name} {time_run(steps[name], num_steps):.6g}', file=out, flush=True)
    elif len(request) == 3 and request[0] == 'warm' and name in steps and request[2].isdigit():
      for _ in range(int(request[2])):
        steps[name]().item()
      print(f'{PREFIX}warmed {name} {request[2]}', file=out, flush=True)
    else:
      print(f'{PREFIX}error unknown request {line.strip()!r}', file=out, flush=True)


def main(argv: Sequence[str]) -> None:
  args = parse_args(argv)
  torch.set_num_threads(args.threads or cores())
  torch.manual_seed(0)
  batches = {name: getattr(args, f'{name}_batch') for name in STEPS}
  steps = make_steps([n for n in args.which.split(',') if n], batches, args.channels_last)
  for step in steps.values():
    for _ in range(args.warmup):
      step()
  layout = 'channels_last' if args.channels_last else 'NCHW'
  # OpenMP's spin-waiting: on cores shared with other jobs, OMP_WAIT_POLICY=PASSIVE measured
  # up to 5x faster than the default (a spinning thread waits for a descheduled one).
  wait_policy = os.environ.get('OMP_WAIT_POLICY', 'default')
  # glibc's malloc settings (compare --torch_keep_freed_memory sets the JAX side's).
  tunables = os.environ.get('GLIBC_TUNABLES', 'default')
  # The vector instructions ATen's kernels use (ATEN_CPU_CAPABILITY can hold them below the CPU's).
  isa = torch.backends.cpu.get_cpu_capability()
  print(f'{READY} version={torch.__version__} threads={torch.get_num_threads()} '
        f'layout={layout} isa={isa} OMP_WAIT_POLICY={wait_policy} GLIBC_TUNABLES={tunables}',
        flush=True)
  serve(steps, args.steps, sys.stdin, sys.stdout)


if __name__ == '__main__':
  main(sys.argv[1:])
