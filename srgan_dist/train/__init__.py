"""Training one stage on one worker, and the Ray Train entry point that runs every stage.

- ``trainer.py``: ``StageTrainer``, one stage on one rank from start (or resume) to its end;
- ``steps.py``: one step function per stage (``STEP_FUNCTIONS``) and the fused Adam they use;
- ``window.py``: the steps since the last log, validation or checkpoint: losses, non-finite steps;
- ``checkpoint.py``: the checkpoint format and ``StageCheckpoints`` (save, prune, resume);
- ``ema.py``: the generator's exponential moving average;
- ``validation.py``: PSNR/SSIM and the image grid during training;
- ``faults.py``: fault injection for the restart and non-finite tests (off in normal runs);
- ``loop.py``: ``train_loop_per_worker``, the only module here that talks to Ray.

Nothing is imported here: importing ``srgan_dist.train.checkpoint`` does not load Ray or DALI.
"""
