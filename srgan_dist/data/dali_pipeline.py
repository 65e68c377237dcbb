"""The DALI training graph: file paths → read → decode HR crop → flips/transpose → bicubic LR → NCHW.

One graph for both devices: ``decode_device="mixed"`` decodes on the GPU (nvJPEG for JPEG; PNG is
still parsed on the CPU) and keeps every later op on the GPU; ``"cpu"`` runs it all on CPU
threads (``device_id=None`` in the pipeline). Imported only when DALI is used.

The file order is not DALI's: ``fn.external_source`` feeds each batch's paths from the same
sampler the PIL loader uses (``train_loader.EndlessBatches``) and ``fn.io.file.read`` reads them.
``fn.readers.file`` shuffles with its own C++ stream (``std::shuffle`` with a ``std::mt19937``
seeded from ``shuffle_after_epoch_seed`` plus its epoch counter, whose order is defined by the C++
standard library, not by us) and counts epochs from 0 whenever a pipeline is built, so a resumed
run would replay its first epochs' order and the PIL loader could never match it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from nvidia.dali import fn, pipeline_def, types


def decoder_kwargs(decode_device: str) -> dict:
    """Arguments of ``fn.decoders.image_crop`` that make ``mixed`` decode like ``cpu`` and PIL.

    nvJPEG's default chroma upsampling of 4:2:0 JPEGs is not libjpeg's "fancy" (triangular)
    one, so GPU-decoded training crops would differ from the PIL-decoded validation images by
    several grey levels at colour edges; ``jpeg_fancy_upsampling`` switches nvJPEG to libjpeg's.
    """
    kwargs = {"device": decode_device, "output_type": types.RGB}
    if decode_device == "mixed":
        kwargs["jpeg_fancy_upsampling"] = True
    return kwargs


@pipeline_def(enable_conditionals=True)
def sr_train_pipeline(
    *,
    input_batches: Iterator[list[np.ndarray]],
    reads_files: bool,
    decode_device: str,
    scale: int,
    hr_patch_size: int,
):
    """``input_batches`` gives each batch's file paths (or ``s3://`` URIs), which
    ``fn.io.file.read`` reads when ``reads_files``, else their encoded bytes
    (``srgan_dist.data.objects.DaliFiles``)."""
    inputs = fn.external_source(source=input_batches, batch=True, dtype=types.UINT8, ndim=1)
    encoded = fn.io.file.read(inputs) if reads_files else inputs
    # ROI decode: libjpeg-turbo / nvJPEG decode little more than the crop of a JPEG.
    hr = fn.decoders.image_crop(
        encoded,
        crop=(hr_patch_size, hr_patch_size),
        crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
        crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
        **decoder_kwargs(decode_device),
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


@pipeline_def
def _decode_resize_pipeline(*, encoded: list[np.ndarray], decode_device: str, size: int):
    images = fn.external_source(source=lambda: encoded, batch=True, dtype=types.UINT8, ndim=1)
    images = fn.decoders.image(images, **decoder_kwargs(decode_device))
    return fn.resize(images, size=[size, size], interp_type=types.INTERP_CUBIC, antialias=True)


def decode_and_resize(encoded: bytes, *, decode_device: str, size: int, device_id: int | None) -> np.ndarray:
    """Decode one encoded image with the training graph's decoder settings and resize it to
    ``size`` x ``size`` (what ``srgan-dist doctor`` runs with ``mixed`` on each GPU node).
    Returns the HxWx3 uint8 result on the host."""
    pipe = _decode_resize_pipeline(
        encoded=[np.frombuffer(encoded, dtype=np.uint8)],
        decode_device=decode_device,
        size=size,
        batch_size=1,
        num_threads=1,
        device_id=device_id,
    )
    pipe.build()
    (output,) = pipe.run()
    if decode_device == "mixed":
        output = output.as_cpu()
    return np.asarray(output.at(0))
