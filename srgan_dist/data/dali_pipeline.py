"""The DALI training graph: read → decode HR crop → flips/transpose → bicubic LR → float NCHW.

One graph for both devices: ``decode_device="mixed"`` decodes on the GPU (nvJPEG for JPEG; PNG is
still parsed on the CPU) and keeps every later op on the GPU; ``"cpu"`` runs it all on CPU
threads (``device_id=None`` in the pipeline). Imported only when DALI is used.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

READER_NAME = "hr_reader"


@pipeline_def(enable_conditionals=True)
def sr_train_pipeline(
    *,
    files: list[str],
    shard_id: int,
    num_shards: int,
    reader_seed: int,
    decode_device: str,
    scale: int,
    hr_patch_size: int,
):
    encoded, _ = fn.readers.file(
        files=files,
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        shuffle_after_epoch=True,  # global reshuffle per epoch with the same seed on all ranks
        seed=reader_seed,
        name=READER_NAME,
    )
    # ROI decode: libjpeg-turbo / nvJPEG decode little more than the crop of a JPEG.
    hr = fn.decoders.image_crop(
        encoded,
        device=decode_device,
        output_type=types.RGB,
        crop=(hr_patch_size, hr_patch_size),
        crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
        crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
    )
    hr = fn.flip(hr, horizontal=fn.random.coin_flip(), vertical=fn.random.coin_flip())
    if fn.random.coin_flip():
        # with the flips: all 8 rotations/reflections
        hr = fn.transpose(hr, perm=[1, 0, 2], output_layout="HWC")
    lr_size = hr_patch_size // scale
    # Keys cubic (a = -0.5) with antialiasing, uint8 out. Against PIL BICUBIC on 192 px crops of
    # astronaut/coffee/chelsea: mean abs diff 0.14-0.16 grey levels (test: < 1); single pixels at
    # strong edges differ by up to ~13 levels (different rounding/edge handling).
    lr = fn.resize(hr, size=[lr_size, lr_size], interp_type=types.INTERP_CUBIC, antialias=True)
    lr = fn.crop_mirror_normalize(lr, dtype=types.FLOAT, output_layout="CHW", mean=[0.0] * 3, std=[255.0] * 3)
    hr = fn.crop_mirror_normalize(
        hr, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * 3, std=[127.5] * 3
    )
    return lr, hr
