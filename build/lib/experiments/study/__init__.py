r"""The study: every loss arm x seed x scale, one table, curves and a sample grid per scale.

  python -m experiments.study --workdir=runs/study [--scales=4,2] [--seeds=0,1] \
      [--steps_scale=1.0] [--arms=srresnet,srgan,...] [--publish_dir=results]

Arms (``arms.ARMS``) are configs from ``configs/`` that differ only in their losses; at one
scale they get the same step budget (``arms.BUDGETS``, times ``--steps_scale``), the same data,
and share ONE guide classifier (``<workdir>/x<scale>/classifier``) and ONE judge
(``.../judge``), trained once, before the arms, on the whole MNIST training split. Scale 4 is
configs/mnist_srgan's setting (1 channel, 7x7 -> 28x28); scale 2 is the seed's exact x2 setting
(configs/seed_x2_rgb: 3 channels, 20000 training images, batch 128), applied to every arm the
same way.

Each run lives in ``<workdir>/x<scale>/<arm>/seed<k>/`` and is an ordinary
``train.train_and_evaluate`` workdir. The study is resumable: a run whose ``results.json``
exists is not run again, and a run with a checkpoint but no ``results.json`` resumes from its
checkpoint. The final numbers of every run use the same ``EVAL_EXAMPLES`` test images, and
every curve point before the last the first ``CURVE_EXAMPLES`` of them. Compiled steps are
cached in ``<workdir>/jax_cache``, so a second seed of an arm compiles nothing.

Written to ``<workdir>/`` and copied to ``--publish_dir`` (small files for the README), per
scale: ``study_x<s>.md`` (the tables, the command, the figures), ``study_x<s>.csv`` (mean and
std over seeds per arm, with steps to 90% / 95% judge accuracy), ``runs_x<s>.csv`` (one row per
run), ``curves_x<s>.csv`` (mean eval curves), ``judge_accuracy_x<s>.png``, ``psnr_x<s>.png``
and ``samples_x<s>.png`` (the first test digit of each class, through every arm).

Modules: ``arms`` (what runs: budgets, arms, configs, run layout), ``runner`` (training the
classifiers and the runs), ``report`` (tables and Markdown), ``plots`` (figures), ``__main__``
(the command line).
"""
