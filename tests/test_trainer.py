"""StageTrainer without Ray: resume continuity, the generator EMA, cadence and state round trips.

The trainer takes its rank, device and a ``report`` function from the Ray entry point, so these
tests drive it in-process on one CPU rank with a ``report`` that stores each checkpoint at once
(``CheckpointUpload.persist``, what Ray Train's SYNC upload runs); every resume is the real one
(``StageTrainer.resume``: the stage's newest good checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import fault_plan, write_photos
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from srgan_dist.config import load_config
from srgan_dist.generator_io import load_generator
from srgan_dist.rundir import RunDir
from srgan_dist.train import checkpoint as ckpt
from srgan_dist.train.ema import GeneratorEMA, warmed_up_decay
from srgan_dist.train.trainer import Cadence, StageTrainer

ROOT = Path(__file__).resolve().parents[1]


class Crash(Exception):
    """What the recorder raises to stop a run right after a checkpoint, like a killed worker."""


class Recorder:
    """A ``report`` that stores each checkpoint before it returns (Ray Train's SYNC upload)."""

    def __init__(self, crash_at_step: int | None = None):
        self.crash_at_step = crash_at_step
        self.metrics: list[dict] = []

    def __call__(self, metrics, name, upload):
        if upload is not None:
            upload.persist()
        self.metrics.append(metrics)
        if metrics["step"] == self.crash_at_step:
            raise Crash


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("photos")
    train = write_photos(root / "train", 7, (48, 48), seed=3)
    val = write_photos(root / "val", 1, (40, 40), seed=4)
    return {"train": [str(p) for p in train], "val": [str(p) for p in val]}


def tiny_config(tmp_path: Path, *overrides: str):
    base = [
        f"run.storage={tmp_path}",
        "data.loader=pil",
        "data.num_threads=1",
        "model.num_blocks=1",
        "model.channels=8",
        "model.disc_channels=8",
        "model.norm=batch",
        "loss.vgg_weights=random",
        "scaling.num_workers=1",
    ]
    for stage in ("srresnet", "srgan"):
        base += [
            f"{stage}.iterations=6",
            f"{stage}.batch_size=2",
            f"{stage}.hr_patch_size=32",
            f"{stage}.log_interval=2",
            f"{stage}.val_interval=100",
            f"{stage}.checkpoint_interval=3",
            f"{stage}.lr=1e-3",
            f"{stage}.lr_milestones=[4]",
        ]
    return load_config(ROOT / "configs" / "demo.yaml", base + list(overrides))


CPU = torch.device("cpu")


def make_trainer(cfg, stage, photos, report, val=False, preemption_notice=None, device=CPU) -> StageTrainer:
    return StageTrainer(
        cfg,
        stage,
        rank=0,
        world_size=1,
        device=device,
        run_dir=RunDir.of(cfg.run.storage, cfg.run.name),
        train_files=photos["train"],
        val_files=photos["val"] if val else [],
        report=report,
        preemption_notice=preemption_notice,
    )


def stage_dir(cfg, stage: str) -> Path:
    """The stage's checkpoint folder in the run directory of ``cfg``."""
    return RunDir.of(cfg.run.storage, cfg.run.name).checkpoints(stage)


def final_state(cfg, stage: str) -> dict:
    return ckpt.load_checkpoint(stage_dir(cfg, stage) / ckpt.checkpoint_dir_name(6), stage)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("stage", ["srresnet", "srgan"])
def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(photos, tmp_path, stage):
    """6 steps straight vs 3 steps, a crash after the step-3 checkpoint, a resume and 3 more.

    The data position is mid-epoch at step 3 (7 files, batch 2), so this also pins the loader's
    exact resume; the lr milestone at step 4 pins the scheduler's.
    """
    straight, crashed = (
        tiny_config(tmp_path / name, "train.ema_decay=0.9") for name in ("straight", "crashed")
    )
    init = handoff(straight, tmp_path) if stage == "srgan" else None
    trainer = make_trainer(straight, stage, photos, Recorder())
    trainer.resume(init)
    trainer.run()

    crashing = Recorder(crash_at_step=3)
    trainer = make_trainer(crashed, stage, photos, crashing)
    trainer.resume(init)
    with pytest.raises(Crash):
        trainer.run()
    assert crashing.metrics[-1]["step"] == 3

    trainer = make_trainer(crashed, stage, photos, Recorder())
    trainer.resume(init)
    assert trainer.resumed and trainer.step == 3
    assert trainer.data_state == {"epoch": 0, "position": 3}  # of 4 batches
    trainer.run()

    a, b = final_state(straight, stage), final_state(crashed, stage)
    for part, state_a in a["trainables"].items():
        state_b = b["trainables"][part]
        if part.startswith("optimizer"):
            for index, moments in state_a["state"].items():
                assert_same_tensors(moments, state_b["state"][index])
        elif part.startswith("scheduler"):
            assert state_a == state_b
        else:
            assert_same_tensors(state_a, state_b)
    assert_same_tensors(a["ema"]["module"], b["ema"]["module"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    assert a["data"] == b["data"]
    # And training did something: the weights moved from their start.
    moved = make_trainer(tiny_config(tmp_path / "unused"), stage, photos, Recorder())
    moved.resume(init)
    start = moved.trainables.generator.state_dict()
    assert any(not torch.equal(start[k], a["trainables"]["generator"][k]) for k in start)


def handoff(cfg, folder: Path) -> str:
    """A generator of ``cfg``'s model exported by an earlier stage, as the Ray entry point hands it on."""
    from srgan_dist.generator_io import GeneratorSpec, save_generator

    torch.manual_seed(7)
    spec = GeneratorSpec.from_model_config(cfg.model, stage="srresnet", step=6)
    return str(save_generator(spec.build(), spec, folder / "generator_srresnet.safetensors"))


@pytest.mark.parametrize("stage", ["srresnet", "srgan"])
def test_a_resume_in_the_other_memory_layout_updates_as_if_the_layout_had_not_changed(
    photos, tmp_path, stage
):
    """A checkpoint of an NCHW run resumed as channels_last (a GPU run with ``train.channels_last``;
    forced here on the CPU): Adam's moments take the parameters' layout, so the fused update is
    the one an NCHW resume makes. (Moments left NCHW under channels_last parameters update wrong.)"""
    resume_in_the_other_layout(photos, tmp_path, stage, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stage", ["srresnet", "srgan"])
def test_a_resume_in_the_other_memory_layout_on_a_gpu(photos, tmp_path, stage):
    """The same on CUDA, where the fused Adam kernels are CUDA's (fp32, no TF32: layouts then
    differ only by the convolution algorithms' rounding)."""
    allow_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        resume_in_the_other_layout(photos, tmp_path, stage, torch.device("cuda", 0))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def resume_in_the_other_layout(photos, tmp_path, stage: str, device: torch.device) -> None:
    # Without BatchNorm: a conv bias before BatchNorm has no gradient but rounding noise, which
    # Adam scales up to full steps, so each layout's rounding would move it its own way.
    no_bn = ("model.norm=none", "model.disc_norm=none", "train.amp=off", "train.channels_last=false")
    straight, crashed = (tiny_config(tmp_path / name, *no_bn) for name in ("straight", "crashed"))
    init = handoff(straight, tmp_path) if stage == "srgan" else None
    trainer = make_trainer(straight, stage, photos, Recorder(), device=device)
    trainer.resume(init)
    trainer.run()
    trainer = make_trainer(crashed, stage, photos, Recorder(crash_at_step=3), device=device)
    trainer.resume(init)
    with pytest.raises(Crash):
        trainer.run()

    trainer = make_trainer(crashed, stage, photos, Recorder(), device=device)
    trainer.use_channels_last = True
    trainer.resume(init)
    trainer.run()

    conv_weight = next(p for p in trainer.trainables.generator.parameters() if p.dim() == 4)
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) and not conv_weight.is_contiguous()
    for optimizer in trainer.trainables.optimizers():
        for parameter, state in optimizer.state.items():
            for name in ("exp_avg", "exp_avg_sq"):
                assert state[name].stride() == parameter.stride(), name
    a, b = final_state(straight, stage)["trainables"], final_state(crashed, stage)["trainables"]
    tolerance = {} if device.type == "cpu" else {"rtol": 1e-3, "atol": 1e-4}
    for part in ("generator", "discriminator") if stage == "srgan" else ("generator",):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, msg=f"{part}.{key}", **tolerance)


def test_the_steps_run_the_vgg_in_the_models_layout(photos, tmp_path):
    """With channels_last on (forced here on the CPU), the frozen VGG's convolutions are
    channels_last too, as the batches and G are, and its ReLUs work in place."""
    from torch import nn

    trainer = make_trainer(tiny_config(tmp_path), "srgan", photos, Recorder())
    trainer.use_channels_last = True
    trainer.resume(handoff(trainer.cfg, tmp_path))
    models = trainer._wrap_models()
    vgg = models.perceptual.vgg.features
    convs = [module for module in vgg if isinstance(module, nn.Conv2d)]
    assert convs and all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    assert not convs[-1].weight.is_contiguous()
    assert all(module.inplace for module in vgg if isinstance(module, nn.ReLU))
    assert trainer.amp_dtype is None  # bf16 autocast (and bf16 VGG weights) only on a GPU


def test_ema_update_follows_the_warmed_up_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = GeneratorEMA(model, decay=0.5)
    expected = {k: v.clone() for k, v in start.items()}
    for t in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update(model)
        decay = min(0.5, (1 + t) / (10 + t))
        assert decay == warmed_up_decay(0.5, t)
        current = model.state_dict()
        expected = {k: decay * expected[k] + (1 - decay) * current[k] for k in expected}
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    assert ema.updates == 3
    # The EMA lags behind the raw weights and never takes gradients.
    assert not torch.equal(ema.module.weight, model.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trip_and_batchnorm_buffers_follow_the_raw_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = GeneratorEMA(model, decay=0.999)
    model.train()
    model(torch.randn(2, 3, 8, 8))  # updates BN running stats
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    copy = GeneratorEMA(model, decay=0.999)
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 1
    assert_same_tensors(copy.module.state_dict(), ema.module.state_dict())


def test_export_holds_the_ema_and_validation_logs_both(photos, tmp_path):
    cfg = tiny_config(tmp_path, "train.ema_decay=0.99", "srresnet.val_interval=6")
    recorder = Recorder()
    trainer = make_trainer(cfg, "srresnet", photos, recorder, val=True)
    trainer.resume(None)
    trainer.run()
    state = final_state(cfg, "srresnet")
    exported, spec = load_generator(trainer.export_generator())
    assert spec.stage == "srresnet" and spec.step == 6
    assert_same_tensors(exported.state_dict(), state["ema"]["module"])
    raw = state["trainables"]["generator"]
    assert any(not torch.equal(value, raw[k]) for k, value in exported.state_dict().items())
    final = recorder.metrics[-1]
    assert final["final"] and {"val/psnr", "val/psnr_raw", "val/psnr_bicubic"} <= final.keys()
    assert final["val/psnr"] != final["val/psnr_raw"]
    # Without an EMA the export is the raw generator.
    without_ema = make_trainer(tiny_config(tmp_path / "raw"), "srresnet", photos, None)
    without_ema.resume(None)
    assert without_ema.exported_generator is without_ema.trainables.generator


def test_checkpoint_without_ema_cannot_resume_an_ema_run(photos, tmp_path):
    cfg = tiny_config(tmp_path, "srresnet.iterations=3")
    trainer = make_trainer(cfg, "srresnet", photos, Recorder())
    trainer.resume(None)
    trainer.run()
    with_ema = make_trainer(tiny_config(tmp_path, "train.ema_decay=0.9"), "srresnet", photos, None)
    with pytest.raises(ckpt.CheckpointError, match="EMA"):
        with_ema.resume(None)


def test_cadence_logs_validates_every_interval_and_the_last_step_but_leaves_its_checkpoint_to_finish():
    cfg = tiny_config(Path("/tmp"), "srresnet.iterations=7", "srresnet.val_interval=3")
    cadence = Cadence(cfg.srresnet)
    checkpoints = ckpt.StageCheckpoints(RunDir.of("/tmp", "x"), "srresnet", cfg.srresnet, "", 0, print)
    assert [s for s in range(1, 8) if cadence.should_log(s)] == [2, 4, 6, 7]
    assert [s for s in range(1, 8) if cadence.should_validate(s)] == [3, 6, 7]
    assert [s for s in range(1, 8) if checkpoints.due(s)] == [3, 6]


def test_resume_takes_the_newest_good_checkpoint_of_the_stage(photos, tmp_path):
    """``resume`` (what the Ray entry point calls) skips a truncated newest checkpoint."""
    cfg = tiny_config(tmp_path, "srresnet.checkpoint_interval=2")
    stage_dir = RunDir.of(cfg.run.storage, cfg.run.name).checkpoints("srresnet")
    trainer = make_trainer(cfg, "srresnet", photos, Recorder(crash_at_step=4))
    trainer.resume(None)
    assert not trainer.resumed  # no checkpoint yet: a fresh start
    with pytest.raises(Crash):
        trainer.run()
    newest = stage_dir / ckpt.checkpoint_dir_name(4) / ckpt.STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])

    resumed = make_trainer(cfg, "srresnet", photos, Recorder())
    resumed.resume(None)
    assert resumed.resumed and resumed.step == 2
    assert resumed.damage_note.startswith("skipped damaged checkpoint(s), resuming from step-00000002: ")
    assert f"{newest}: 100 bytes" in resumed.damage_note and "\n" not in resumed.damage_note


def test_a_nonfinite_loss_can_be_skipped_and_counted(photos, tmp_path, capsys):
    """``train.on_nonfinite=skip``: the NaN step's update is dropped, counted in TensorBoard
    (``train/nonfinite_skips``) and said on the console, and the stage trains to its end.
    (``error``, the default, and the driver's report of it: tests/test_training.py.)"""
    cfg = tiny_config(tmp_path, "train.on_nonfinite=skip")
    with fault_plan({"nan": {"stage": "srresnet", "step": 3}}):
        trainer = make_trainer(cfg, "srresnet", photos, Recorder())
    trainer.resume(None)
    trainer.run()

    assert trainer.step == 6 and trainer.window.skips == 1
    assert all(torch.isfinite(p).all() for p in trainer.trainables.generator.parameters())
    assert "[srresnet] non-finite loss at step 3: update skipped (1 so far)" in capsys.readouterr().out
    events = EventAccumulator(str(RunDir.of(cfg.run.storage, cfg.run.name).tensorboard("srresnet")))
    events.Reload()
    assert events.Scalars("train/nonfinite_skips")[-1].value == 1


def test_a_preemption_notice_checkpoints_at_every_check_until_the_stage_ends(photos, tmp_path, capsys):
    """From the first check that hears of a reclaim on, each check writes a checkpoint and stores
    it before training on (whatever ``train.checkpoint_upload`` says), so a node lost at any
    moment costs at most one check interval; the console says so once. No check at the last step
    (the final checkpoint comes anyway), none at all with an interval of 0."""
    cfg = tiny_config(
        tmp_path,
        "srresnet.iterations=8",
        "srresnet.checkpoint_interval=100",
        "train.preemption_check_interval=2",
        "train.checkpoint_upload=async",
    )
    asked, stored = [], []

    def notice():
        asked.append(trainer.step)
        return "node 1234 being preempted" if trainer.step >= 4 else None

    def report(metrics, name, upload):
        stored.append((metrics["step"], upload.background))
        upload.persist()

    trainer = make_trainer(cfg, "srresnet", photos, report, preemption_notice=notice)
    trainer.resume(None)
    trainer.run()
    assert asked == [2, 4, 6]
    assert stored == [(4, False), (6, False), (8, True)]  # the final one uploads in the background
    assert ckpt.list_checkpoints(stage_dir(cfg, "srresnet")) == ["step-00000008", "step-00000006"]
    out = capsys.readouterr().out
    assert out.count("preemption notice") == 1
    assert (
        "[srresnet] preemption notice at step 4: node 1234 being preempted; checkpointing now and every "
        "2 steps until the node is gone" in out
    )

    never = tiny_config(tmp_path / "never", "train.preemption_check_interval=0")
    quiet = make_trainer(never, "srresnet", photos, Recorder(), preemption_notice=lambda: asked.append(-1))
    quiet.resume(None)
    quiet.run()
    assert -1 not in asked
