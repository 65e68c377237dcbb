"""Judge a generator against bicubic on HR images: PSNR/SSIM on Y, border = scale.

    srgan-dist evaluate --weights runs/demo --hr data/sample/val [--json eval.json]

For each HR image (sorted by name): crop the bottom/right to a multiple of the scale, make LR
with the reference resize (Pillow BICUBIC, antialiased: ``srgan_dist.data.resize``), upscale it
with the generator (tiled, as ``upscale`` does) and with Pillow bicubic, quantise both to 8 bits
as saved PNGs would be, and score them against the HR crop with ``psnr_y``/``ssim_y`` (BT.601 Y,
``crop_border = scale``). With ``lr_dir`` the LR images are read instead of made (benchmark
sets such as Set5/Set14 ship their own, often MATLAB-made); the HR image is then cropped to
``scale`` times the LR size.

Reading, LR-making and scoring are ``srgan_dist.data.scoring``'s, which validation during
training uses too, so an image scores the same here as in training validation (exactly so with
``--tile 0``: validation runs the model on whole images). Images are read as training data is
(``srgan_dist.data.scan.CONVERSION_RULES``): an alpha channel is composited over white (what
the model was trained on; the colour under transparent pixels is not scored), grayscale is
scored as R = G = B, and 16-bit images at 8 bits.

LPIPS (optional, ``lpips=True``) needs the ``lpips`` package and the AlexNet weights it builds on
already in torch's hub cache (nothing is downloaded); when either is missing the report says
why and scores only PSNR/SSIM.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from srgan_dist.data.resize import bicubic_upscale
from srgan_dist.data.scoring import min_scoring_side, reference_pair, score_y
from srgan_dist.errors import UserError
from srgan_dist.generator_io import GeneratorSpec
from srgan_dist.infer import DEFAULT_TILING, Tiling, upscale_rgb
from srgan_dist.models import Generator
from srgan_dist.pictures import image_files, read_rgb8
from srgan_dist.pixels import quantize, to_tensor, to_unit

LR_METHOD = "PIL BICUBIC, antialiased (srgan_dist.data.resize.bicubic_downscale)"
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
Scorer = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class ImageScores:
    name: str
    hr_size: tuple[int, int]
    """(width, height) of the scored HR crop."""
    psnr_model: float
    ssim_model: float
    psnr_bicubic: float
    ssim_bicubic: float
    lpips_model: float | None = None
    lpips_bicubic: float | None = None


@dataclass
class EvaluationReport:
    weights: str
    spec: GeneratorSpec
    lr_source: str
    images: list[ImageScores] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """HR images that could not be scored, and why (the others are still scored)."""
    lpips: str = "not requested"
    """``computed (...)``, ``not requested``, or why it is unavailable."""

    def means(self) -> dict[str, float]:
        if not self.images:
            return {}
        keys = ["psnr_model", "ssim_model", "psnr_bicubic", "ssim_bicubic"]
        if self.images and self.images[0].lpips_model is not None:
            keys += ["lpips_model", "lpips_bicubic"]
        return {key: float(np.mean([getattr(scores, key) for scores in self.images])) for key in keys}

    def gains(self) -> dict[str, float]:
        """Model minus bicubic of the means (for LPIPS lower is better, so a gain is negative)."""
        means = self.means()
        metrics = [key.removesuffix("_model") for key in means if key.endswith("_model")]
        return {metric: means[f"{metric}_model"] - means[f"{metric}_bicubic"] for metric in metrics}

    def to_json(self) -> dict:
        return {
            "weights": self.weights,
            "model": self.spec.to_json(),
            "scale": self.spec.scale,
            "crop_border": self.spec.scale,
            "metric_space": "Y (BT.601, MATLAB rgb2ycbcr), 8-bit",
            "lr_source": self.lr_source,
            "lpips": self.lpips,
            "images": [asdict(scores) for scores in self.images],
            "mean": self.means(),
            "gain": self.gains(),
            "failed": [{"file": path.name, "reason": reason} for path, reason in self.failed],
        }

    def table(self) -> str:
        """Per-image table, then means and the gain over bicubic."""
        if not self.images:
            return f"no image could be scored ({len(self.failed)} failed)"
        has_lpips = self.images and self.images[0].lpips_model is not None
        name_width = max([len("image"), len("mean"), *(len(s.name) for s in self.images)])
        header = f"{'image':<{name_width}}  {'size':>9}  {'PSNR':>7} {'SSIM':>6}  {'bicubic':>7} {'SSIM':>6}"
        header += f"  {'gain dB':>7}" + (f"  {'LPIPS':>6} {'bic.':>6}" if has_lpips else "")
        lines = [header, "-" * len(header)]

        def row(name: str, size: str, values: dict[str, float]) -> str:
            text = f"{name:<{name_width}}  {size:>9}  {values['psnr_model']:7.3f} {values['ssim_model']:6.4f}"
            text += f"  {values['psnr_bicubic']:7.3f} {values['ssim_bicubic']:6.4f}"
            text += f"  {values['psnr_model'] - values['psnr_bicubic']:+7.3f}"
            if has_lpips:
                text += f"  {values['lpips_model']:6.4f} {values['lpips_bicubic']:6.4f}"
            return text

        for scores in self.images:
            lines.append(row(scores.name, "x".join(map(str, scores.hr_size)), asdict(scores)))
        lines.append("-" * len(header))
        lines.append(row("mean", f"{len(self.images)} img", self.means()))
        gains = ", ".join(f"{metric} {value:+.4f}" for metric, value in self.gains().items())
        lines.append(f"gain over bicubic (model - bicubic): {gains}")
        lines.append(f"LR: {self.lr_source}; Y channel, border {self.spec.scale}; LPIPS: {self.lpips}")
        return "\n".join(lines)


def lpips_scorer(device: torch.device) -> tuple[Scorer | None, str]:
    """An LPIPS (AlexNet) scorer if it can run offline, else ``None`` and why not."""
    if importlib.util.find_spec("lpips") is None:
        return None, "unavailable: the lpips package is not installed (pip install lpips)"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS
    if not cached.is_file():
        return (
            None,
            f"unavailable: AlexNet weights are not in torch's hub cache ({cached}); nothing is downloaded",
        )
    import lpips

    model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    def score(sr: np.ndarray, hr: np.ndarray) -> float:
        with torch.inference_mode():  # LPIPS takes images in [-1, 1]
            return float(model(to_tensor(sr, device) * 2 - 1, to_tensor(hr, device) * 2 - 1))

    return score, "computed (lpips, AlexNet)"


def find_lr(hr_path: Path, lr_files: dict[str, Path], scale: int) -> Path:
    """The LR file for an HR image: same stem, or DIV2K/Set5-style ``<stem>x4`` / ``<stem>_x4``…"""
    stem = hr_path.stem
    for candidate in (stem, f"{stem}x{scale}", f"{stem}_x{scale}", f"{stem}_LRBI_x{scale}"):
        if candidate in lr_files:
            return lr_files[candidate]
    raise UserError(
        f"--lr-dir has no LR image for {hr_path.name} (looked for stems {stem}, {stem}x{scale}, "
        f"{stem}_x{scale}, {stem}_LRBI_x{scale})"
    )


def lr_hr_pair(hr_path: Path, scale: int, lr_files: dict[str, Path] | None) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR crop) as uint8 arrays: ``scoring.reference_pair``, or LR read from ``lr_files``."""
    hr = read_rgb8(hr_path)
    if min(hr.shape[:2]) < min_scoring_side(scale):
        raise UserError(
            f"{hr.shape[1]}x{hr.shape[0]} is too small to score at x{scale} "
            f"(at least {min_scoring_side(scale)} px on each side)"
        )
    if lr_files is None:
        return reference_pair(hr, scale)
    lr_path = find_lr(hr_path, lr_files, scale)
    lr = read_rgb8(lr_path)
    height, width = lr.shape[0] * scale, lr.shape[1] * scale
    if hr.shape[0] < height or hr.shape[1] < width:
        raise UserError(
            f"{lr_path} is {lr.shape[1]}x{lr.shape[0]}, but x{scale} of it exceeds "
            f"{hr_path} ({hr.shape[1]}x{hr.shape[0]})"
        )
    return lr, hr[:height, :width]


def evaluate(
    model: Generator,
    spec: GeneratorSpec,
    hr_dir: str | Path,
    *,
    weights_label: str = "",
    lr_dir: str | Path | None = None,
    tiling: Tiling = DEFAULT_TILING,
    device: torch.device | str = "cpu",
    lpips: bool = False,
) -> EvaluationReport:
    """Score ``model`` (on ``device``, eval mode) and bicubic on every image in ``hr_dir``.

    An image that cannot be scored (unreadable, too small for the SSIM window after the border
    crop, no LR image in ``lr_dir``) goes to ``report.failed`` with the reason; the rest are scored.
    """
    hr_dir = Path(hr_dir)
    if not hr_dir.is_dir():
        raise UserError(f"--hr {hr_dir}: no such folder")
    hr_files = image_files(hr_dir)
    if not hr_files:
        raise UserError(f"--hr {hr_dir}: no image files in this folder")
    scale = spec.scale
    lr_files = None
    lr_source = LR_METHOD
    if lr_dir is not None:
        lr_dir = Path(lr_dir)
        if not lr_dir.is_dir():
            raise UserError(f"--lr-dir {lr_dir}: no such folder")
        lr_files = {path.stem: path for path in image_files(lr_dir)}
        lr_source = f"read from {lr_dir}"
    scorer, lpips_status = lpips_scorer(torch.device(device)) if lpips else (None, "not requested")
    report = EvaluationReport(weights_label, spec, lr_source, lpips=lpips_status)
    for hr_path in hr_files:
        try:
            lr, hr = lr_hr_pair(hr_path, scale, lr_files)
            sr_model = quantize(upscale_rgb(model, to_unit(lr), tiling, device), 8)
            sr_bicubic = bicubic_upscale(lr, scale)
            model_scores, bicubic_scores = score_y(sr_model, hr, scale), score_y(sr_bicubic, hr, scale)
        except UserError as error:  # unreadable, too small, or no LR image: this image only
            report.failed.append((hr_path, str(error).removeprefix(f"{hr_path}: ")))
            continue
        report.images.append(
            ImageScores(
                name=hr_path.name,
                hr_size=(hr.shape[1], hr.shape[0]),
                psnr_model=model_scores.psnr,
                ssim_model=model_scores.ssim,
                psnr_bicubic=bicubic_scores.psnr,
                ssim_bicubic=bicubic_scores.ssim,
                lpips_model=scorer(sr_model, hr) if scorer else None,
                lpips_bicubic=scorer(sr_bicubic, hr) if scorer else None,
            )
        )
    return report
