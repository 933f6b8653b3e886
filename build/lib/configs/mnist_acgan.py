"""mnist_srgan with an AC-GAN discriminator head (Odena et al. 2017) as the auxiliary loss."""

from configs import mnist_srgan


def get_config():
  config = mnist_srgan.get_config()
  config.loss.auxiliary = 'discriminator_head'
  config.loss.auxiliary_weight = 0.1
  config.loss.auxiliary_labels = 'true'
  config.eval.judge_workdir = 'judge'
  return config
