"""The benchmark's command line: flags -> speed.Options, host devices set up, speed.run.

  python -m benchmarks --config=configs/mnist_srgan.py
  python -m benchmarks --config=configs/seed_x2_rgb.py --config.loss.content=vgg --random_vgg
  XLA_FLAGS=--xla_force_host_platform_device_count=1 python -m benchmarks ...

Every measured figure is printed as one line ``bench: <name> = <value> <unit>`` and the run
ends with one ``summary: key=value ...`` line (benchmarks/README.md has the method and results).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from benchmarks import speed
from benchmarks import workloads
from srgan_jax import platform

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_bool('random_vgg', False, 'Random VGG19 weights for a VGG content loss (cost '
                  'only; sets config.loss.vgg.random_weights_for_benchmark). Prints a warning.')
flags.DEFINE_integer('steps', speed.Options.steps, 'Steps per timed run (K).')
flags.DEFINE_integer('runs', speed.Options.runs, 'Timed runs per figure (median, min, max).')
flags.DEFINE_integer('warmup', speed.Options.warmup, 'Untimed steps after compilation.')
flags.DEFINE_integer('peak_matmul_size', speed.Options.peak_matmul_size,
                     'Size n of the n x n f32 matmul that measures the peak FLOP rate.')
flags.DEFINE_integer('peak_runs', speed.Options.peak_runs, 'Timed matmuls for the peak.')
flags.DEFINE_bool('eval', speed.Options.eval, 'Measure evaluation throughput.')
flags.DEFINE_integer('eval_runs', speed.Options.eval_runs, 'Timed passes over the test images.')
flags.DEFINE_string('judge_workdir', '', 'A judge classifier workdir; default: a random LeNet.')
flags.DEFINE_list('variants', list(speed.Options.variants), 'GAN iterations to time besides '
                  f'the training path: {", ".join(workloads.VARIANTS)}.')
flags.DEFINE_bool('flops_on_cpu', None, 'Count FLOPs by compiling the steps for the CPU '
                  '(default: only when the devices are not CPUs).')
flags.DEFINE_integer('input_pipeline_steps', speed.Options.input_pipeline_steps,
                     'Batches timed for the input-pipeline cost.')
flags.DEFINE_bool('breakdown', speed.Options.breakdown, 'Also time each network\'s forward + '
                  'backward pass alone on one device (where the time goes).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before the first JAX computation (importing jax starts no backend).
  platform.configure_cpu(FLAGS.config.cpu_devices_per_core, FLAGS.config.cpu_conv_library)
  options = speed.Options(steps=FLAGS.steps, runs=FLAGS.runs, warmup=FLAGS.warmup,
                          peak_matmul_size=FLAGS.peak_matmul_size, peak_runs=FLAGS.peak_runs,
                          eval=FLAGS.eval, eval_runs=FLAGS.eval_runs,
                          judge_workdir=FLAGS.judge_workdir, random_vgg=FLAGS.random_vgg,
                          variants=tuple(FLAGS.variants), flops_on_cpu=FLAGS.flops_on_cpu,
                          input_pipeline_steps=FLAGS.input_pipeline_steps,
                          breakdown=FLAGS.breakdown)
  speed.run(FLAGS.config, options)


if __name__ == '__main__':
  platform.freeze_imported_objects()
  app.run(main)
