"""The seed's SRGAN on MNIST at x4: 4 residual blocks, LSGAN 1e-3, patch discriminator.

Optimizer as in the seed's notebook (Adam 8e-5, betas 0.5/0.999). Scale 4 (7x7 -> 28x28) is
the report's main focus and the case where recognisability is at stake; 1 channel, since 3
only repeats the grey image.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.scale = 4
  config.data.channels = 1
  config.generator.num_res_blocks = 4        # seed: 4 (paper: 16).
  config.generator.upsample_batch_norm = True  # seed's GeneratorResNet.
  config.discriminator.head = 'patch'        # seed: conv3x3 -> 1 logit per patch.
  config.loss.content = 'mse'
  config.loss.adversarial = 'lsgan'          # seed: nn.MSELoss on D's output.
  config.loss.adversarial_weight = 1e-3
  config.loss.auxiliary = 'none'
  config.optimizer.learning_rate = 8e-5      # seed.
  # SRResNet pretraining at a higher rate than the paper's 1e-4: minutes, not 10^6 iterations.
  config.optimizer.pretrain_learning_rate = 1e-3
  config.optimizer.b1 = 0.5                  # seed.
  config.optimizer.b2 = 0.999
  config.batch_size = 64
  # Budget: minutes on a 2-core CPU (the paper: 10^6 SRResNet + 2x10^5 SRGAN iterations).
  config.pretrain_steps = 1600
  # 300 GAN steps: with mnist_cnn's classifier loss and 200, the judge's score on SR moved
  # between 97.98% and 98.28% from run to run (the floor is 98%); continued from a step-1800
  # checkpoint that scored 97.98%, 300 and 400 reached 98.18% (the main job, AVX2 AMD EPYC,
  # 2026-12-04). Each 100 steps cost ~75 s on 2 cores.
  config.num_train_steps = 300
  config.eval_every_steps = 800
  config.eval.curve_examples = 2000          # the evals during training; the last uses all.
  config.checkpoint_every_steps = 200
  config.ema_decay = 0.99  # an average over ~100 steps suits a run of ~10^3 steps.
  config.eval.judge_workdir = ''             # PSNR/SSIM only; mnist_cnn adds the judge.
  return config
