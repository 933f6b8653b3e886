"""The seed's modified SRGAN: mnist_srgan plus the auxiliary classifier loss (weight 0.1).

A pretrained MNIST CNN (trained first into `classifier/` under the workdir when missing) scores
the SR digits against their true labels, and its gradient reaches the generator.
"""

from configs import mnist_srgan


def get_config():
  config = mnist_srgan.get_config()
  config.loss.auxiliary = 'classifier'
  config.loss.auxiliary_weight = 0.1      # seed: 0.1 (and 0.001).
  config.loss.auxiliary_labels = 'true'
  # The seed had no pretraining stage: its classifier loss acted from the first step.
  config.loss.auxiliary_during_pretrain = True
  config.loss.classifier_workdir = 'classifier'
  config.eval.judge_workdir = 'judge'
  config.classifier.num_epochs = 2
  return config
