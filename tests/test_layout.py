"""The house rules, checked: imports point one way, and the package installs and runs alone.

TIERS is the layout table of the README: a module may import the package's modules of lower
tiers only, at the top of the file. So there is no cycle, the Colab path (inference) pulls in
no training code, and the library never imports configs/, experiments/ or benchmarks/, which
sit above it with main.py.
"""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = 'srgan_jax'

TIERS = (
    # Shared basics: no import from the package (native: builds the C++ FFI modules).
    ('errors', 'files', 'config_utils', 'safe_pickle', 'native'),
    # Pixels, the process's XLA set-up; C++ through XLA's FFI (Winograd's transforms; oneDNN's
    # convs; BatchNorm's sums; thin convs; Adam's update).
    ('image_ops', 'images', 'metrics', 'distributed', 'platform', 'winograd_native',
     'onednn', 'batch_norm', 'direct_conv', 'adam'),
    # Training state (its Adam's update native where it is built); Winograd's arithmetic of a
    # fast conv (its transforms native where they are built).
    ('state', 'winograd'),
    # The parts: data sources, the convolution and its implementations, losses, checkpoints,
    # logs.
    ('sources', 'convolution', 'losses', 'checkpoints', 'writers'),
    # The networks: SRGAN's, the classifiers and the pretrained VGG19 of the content loss, all
    # built of convolution's convs (tuned alike).
    ('models', 'vgg'),
    # What a config may say; convs timed and chosen per machine.
    ('validation', 'conv_tuning'),
    # Data in memory, the pure training steps, inference from a checkpoint.
    ('input_pipeline', 'steps', 'inference'),
    # Evaluation, the classifiers' trainer, the upscaling command.
    ('evaluate', 'classifier_train', 'upscale'),
    # The SRGAN trainer.
    ('train',),
)
TIER = {name: i for i, names in enumerate(TIERS) for name in names}
ABOVE_THE_LIBRARY = ('configs', 'experiments', 'benchmarks', 'main', 'tests')


def _modules():
  return sorted(p.stem for p in (ROOT / PACKAGE).glob('*.py') if p.stem != '__init__')


def _imports(name):
  """(module imported, line, at top level?) for every import in srgan_jax/<name>.py."""
  tree = ast.parse((ROOT / PACKAGE / f'{name}.py').read_text())
  top = {id(node) for node in tree.body}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      targets = [node.module]
      if node.module == PACKAGE:
        targets = [f'{PACKAGE}.{alias.name}' for alias in node.names]
    else:
      continue
    for target in targets:
      out.append((target, node.lineno, id(node) in top))
  return out


def _package_imports(name):
  return {t.split('.')[1] for t, _, _ in _imports(name) if t.startswith(PACKAGE + '.')}


def test_every_module_has_a_tier():
  assert set(_modules()) == set(TIER), 'add the new module to TIERS (and the README table)'


@pytest.mark.parametrize('name', sorted(TIER))
def test_imports_point_down_and_sit_at_the_top(name):
  for target, line, at_top in _imports(name):
    root = target.split('.')[0]
    assert root not in ABOVE_THE_LIBRARY, f'{name}.py:{line} imports {target}, above the library'
    if root != PACKAGE:
      continue
    dep = target.split('.')[1]
    assert at_top, f'{name}.py:{line} imports {target} inside a function'
    assert TIER[dep] < TIER[name], (
        f'{name}.py:{line} imports {dep}, which is not in a lower tier '
        f'({name}: tier {TIER[name]}, {dep}: tier {TIER[dep]})')


def test_the_colab_path_pulls_in_no_training_code():
  seen, todo = set(), ['inference']
  while todo:
    name = todo.pop()
    if name not in seen:
      seen.add(name)
      todo.extend(_package_imports(name))
  assert not seen & {'train', 'classifier_train', 'steps', 'state', 'losses', 'evaluate'}, seen


def _workdir_with_a_generator(workdir: str) -> str:
  """A workdir holding one checkpoint of a tiny generator, saved as training saves it.

  Its weights are the initial ones: restoring reads the same items whatever the training did,
  and so this test needs no trained run (nor the session's, which would tie it to that
  fixture's xdist worker).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from srgan_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from srgan_jax import models  # pylint: disable=g-import-not-at-top
  from tests.conftest import make_tiny_config  # pylint: disable=g-import-not-at-top
  config = make_tiny_config()
  lr = jnp.zeros((1, 7, 7, config.data.channels))
  variables = models.create_generator(config).init(jax.random.PRNGKey(0), lr, train=False)
  checkpoints.save(checkpoints.manager(workdir), 4, {'generator': variables}, variables, config)
  return workdir


@pytest.mark.long
def test_installed_package_runs_from_another_directory(tmp_path):
  """`pip install .` puts the library, the configs and the experiment commands in place: the
  documented entry points work outside the checkout, on a workdir of checkpoints."""
  workdir = _workdir_with_a_generator(str(tmp_path / 'run'))
  # From a copy of the checkout, so that the build's own files stay out of it.
  source = tmp_path / 'source'
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
      '.git', 'runs', 'build', '*.egg-info', '__pycache__', 'results', 'docs'))
  venv = tmp_path / 'venv'
  # Without pip of its own (ensurepip took 6.9 s of this test's 21 on the AVX2 EPYC): this
  # process's pip installs into it (`--python`).
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip',
                  str(venv)], check=True)
  python = str(venv / 'bin' / 'python')
  # The dependencies come from the system site-packages; the build uses its setuptools (no
  # build isolation: no network needed).
  install = subprocess.run(
      [sys.executable, '-m', 'pip', '--python', python, 'install', '--quiet', '--no-deps',
       '--no-build-isolation', str(source)], capture_output=True, text=True, cwd=tmp_path)
  assert install.returncode == 0, install.stderr[-3000:]
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  # The experiment and benchmark commands import and define their flags there too (their
  # `-m` entry is the same module; running each with --help would cost two more processes).
  code = ('from absl import flags\n'
          'import srgan_jax, experiments.study.__main__, benchmarks.__main__, configs.mnist_cnn\n'
          'import srgan_jax.inference\n'
          'print(srgan_jax.__file__)\n'
          'experiments.study.__main__.define_flags()\n'
          'print("flags", "workdir" in flags.FLAGS, "config" in flags.FLAGS, "arms" in flags.FLAGS)')
  out = subprocess.run([python, '-c', code], capture_output=True, text=True, cwd=elsewhere,
                       env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'flags True True True' in out.stdout, out.stdout
  assert 'site-packages' in out.stdout, out.stdout
  # The upscaling command as the README gives it, on a PNG, from elsewhere: load_generator
  # restores the workdir's checkpoint in the installed package.
  Image.fromarray(np.full((7, 7), 128, np.uint8)).save(elsewhere / 'digit.png')
  run = subprocess.run([python, '-m', 'srgan_jax.upscale', f'--workdir={workdir}', 'digit.png',
                        'digit_x4.png'], capture_output=True, text=True, cwd=elsewhere, env=env)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
  assert Image.open(elsewhere / 'digit_x4.png').size == (28, 28)


def test_the_commands_modules_import_together():
  """main.py, srgan_jax.upscale and benchmarks.targets each have a --workdir flag: imported in
  one process (a notebook, a script, a test worker) they must not clash, so the modules that
  are also imported for their functions define their flags only when run as commands."""
  run = subprocess.run(
      [sys.executable, '-c', 'import main; from srgan_jax import upscale; '
       'from benchmarks import targets; from absl import flags; '
       'print(flags.FLAGS["workdir"].help)'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip() == 'Directory for checkpoints, metrics and samples.'  # main.py's.


# Where the project's commands are (`if __name__ == '__main__'`), and the one of them that
# imports nothing of JAX's: the PyTorch side of the comparison.
COMMAND_PLACES = ('main.py', 'srgan_jax/**/*.py', 'benchmarks/**/*.py', 'experiments/**/*.py')
COMMANDS_WITHOUT_JAX = ('benchmarks/torch_reference.py',)


def test_every_command_freezes_its_imports_before_it_runs():
  """Each command's `__main__` block first takes its imports' objects out of the garbage
  collector's walks (platform.freeze_imported_objects: ~0.7 s off each process's exit)."""
  commands = []
  for path in sorted({p for place in COMMAND_PLACES for p in ROOT.glob(place)}):
    rel = path.relative_to(ROOT).as_posix()
    if rel in COMMANDS_WITHOUT_JAX:
      continue
    for node in ast.parse(path.read_text()).body:
      if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and
          ast.unparse(node.test) == "__name__ == '__main__'"):
        commands.append(rel)
        assert ast.unparse(node.body[0]) == 'platform.freeze_imported_objects()', rel
  assert 'main.py' in commands and 'benchmarks/targets.py' in commands, commands
  assert len(commands) >= 7, commands


def test_a_run_of_the_suite_leaves_no_temporary_directories_and_no_heap_to_walk(tmp_path):
  """The suite's session directories (tests/conftest.py: the XLA cache, the conv plans) go with
  the run that made them, so that runs do not pile up in /tmp: a pytest run that inherits none
  makes them in its TMPDIR (seen by a plugin while it runs) and leaves nothing there.

  And what its tests left alive (here 200,000 lists a plugin keeps) is frozen at its end, so
  that the garbage collections pytest runs after the session walk none of it (in an xdist
  worker they took over the 5 s xdist waits before it interrupts the worker)."""
  probe = tmp_path / 'probe'
  probe.mkdir()
  seen = probe / 'seen.txt'
  walked = probe / 'walked.txt'
  (probe / 'session_dirs_probe.py').write_text(
      'import atexit, gc, os\n'
      'KEPT = []\n'
      'def pytest_collection_finish(session):\n'
      f'  with open({str(seen)!r}, "w") as f:\n'
      '    for name in ("JAX_COMPILATION_CACHE_DIR", "SRGAN_JAX_CACHE_DIR"):\n'
      '      f.write(f"{os.environ[name]} {os.path.isdir(os.environ[name])}\\n")\n'
      'def pytest_sessionfinish(session):\n'
      '  KEPT.extend([i] for i in range(200_000))\n'
      'def _walked():\n'
      f'  with open({str(walked)!r}, "w") as f:\n'
      '    f.write(str(len(gc.get_objects())))\n'
      'atexit.register(_walked)\n')
  temp = tmp_path / 'temp'
  temp.mkdir()
  # The C++ builds stay this suite's (building them again costs about 11 s of CPU time).
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_COMPILATION_CACHE_DIR', 'SRGAN_JAX_CACHE_DIR',
                      'SRGAN_JAX_TESTS_CACHE_OF', 'PYTEST_XDIST_WORKER')}
  env.update(TMPDIR=str(temp), PYTHONPATH=os.pathsep.join(filter(None, (
      str(probe), env.get('PYTHONPATH')))))
  run = subprocess.run(
      [sys.executable, '-m', 'pytest', '-p', 'session_dirs_probe', '-p', 'no:xdist',
       '-o', 'addopts=', '--collect-only', '-q', 'tests/test_metrics.py'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  made = [line.split() for line in seen.read_text().splitlines()]
  assert len(made) == 2 and all(
      os.path.dirname(path) == str(temp) and there == 'True' for path, there in made), made
  assert not os.listdir(temp), os.listdir(temp)
  assert int(walked.read_text()) < 100_000, walked.read_text()
