"""End-to-end tests of ``contrastseg pretrain`` on the built-in demo scenes (CPU, seconds)."""

import json
import math
import os
import re
import socket

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from contrastseg.cli import main
from contrastseg.config import load_pretrain_config
from contrastseg.train.checkpoint import list_checkpoints
from contrastseg.train.model import PretrainModel
from contrastseg.train.pretrain import TrainingDiverged, run_pretrain

# 4 scenes of 64 px, 48 px patches, 32 px views: 16 patches = 4 steps of 4 images per epoch
TINY = [
    "run.progress=false",
    "run.image_every=0",
    "run.log_every=1",
    "data.demo.n_scenes=4",
    "data.demo.size=64",
    "data.patch_size=48",
    "data.coverage=2.0",
    "views.size=32",
    "method.region_size=8",
    "model.arch=resnet18",
    "train.batch_size=4",
    "train.num_workers=0",
    "optim.warmup_steps=0",
    # fp32 whatever the CPU: train.amp=auto is bf16 on CPUs with native bf16 only, and the
    # collapse and equality tests are calibrated in fp32 (bf16 runs: test_runtime_settings.py)
    "train.amp=off",
]


def set_args(overrides):
    return [arg for text in overrides for arg in ("--set", text)]


def tiny(tmp_path, *extra):
    return load_pretrain_config(None, [*TINY, f"run.root={tmp_path}", "run.name=tiny", *extra])


def test_quickstart_cli_runs_end_to_end(tmp_path, capsys):
    code = main(
        ["pretrain", *set_args(TINY), "--set", f"run.root={tmp_path}",
         "--set", "train.max_steps=3", "--set", "run.image_every=2", "--name", "cli"]
    )  # fmt: skip
    assert code == 0
    run = tmp_path / "cli"
    assert (run / "config.yaml").is_file() and (run / "train.log").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 3
    assert list(run.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "views").iterdir()) == [
        "step_00000001.png",
        "step_00000002.png",
    ]
    (ckpt,) = list_checkpoints(run / "checkpoints")
    payload = torch.load(ckpt, weights_only=True)
    assert payload["step"] == 3 and payload["config"]["model"]["arch"] == "resnet18"
    assert "backbone.conv1.weight" in payload["model"] and payload["in_channels"] == 4
    lines = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert {"loss/total", "loss/global", "loss/local", "lr", "regions/valid_fraction"} <= set(
        lines[0]
    )
    assert f"checkpoint: {ckpt}" in capsys.readouterr().out
    # a second run into the same folder without --resume is refused, naming the folder
    code = main(
        [
            "pretrain",
            *set_args(TINY),
            "--set",
            f"run.root={tmp_path}",
            "--name",
            "cli",
        ]
    )
    assert code == 2
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["glcnet", "simclr"])
def test_loss_decreases_on_demo_scenes(tmp_path, method):
    config = tiny(
        tmp_path, f"method.name={method}", "train.max_steps=60", "run.log_every=4",
        "optim.lr=0.002", "data.demo.n_scenes=8", "train.batch_size=8",
    )  # fmt: skip
    history = run_pretrain(config).history
    losses = [h["loss/total"] for h in history]
    assert len(losses) == 15
    # 60 steps: at 40, one seed of four rose before it fell (window means of 4 steps).
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


def _params(path):
    return torch.load(path, weights_only=True)


# queue_size 20: 8 global and up to 32 local keys a step, so both queues fill and wrap
@pytest.mark.parametrize("queue", [[], ["method.queue_size=20"]], ids=["no_queue", "queue"])
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, monkeypatch, queue):
    common = [
        "train.max_steps=7",
        "run.checkpoint_every=2",
        "train.deterministic=true",
        "run.keep_last=10",
        *queue,
    ]
    full = run_pretrain(tiny(tmp_path / "a", *common))
    # the second run is killed in its step 6 (after the step-4 checkpoint, mid-epoch 2)
    calls = {"n": 0}
    original = PretrainModel.forward

    def dying_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PretrainModel, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tiny(tmp_path / "b", *common))
    monkeypatch.setattr(PretrainModel, "forward", original)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "tiny" / "checkpoints")][
        -1
    ] == "step_00000004.pt"
    resumed = run_pretrain(tiny(tmp_path / "b", *common, "run.resume=auto"))
    assert resumed.step == 7
    a, b = _params(full.checkpoint), _params(resumed.checkpoint)
    for part in ("model", "heads"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    # the killed run logged step 5 after its step-4 checkpoint: the resumed run replaces it,
    # so scalars.jsonl holds every step once, with the uninterrupted run's losses
    records = {}
    for name in ("a", "b"):
        lines = (tmp_path / name / "tiny" / "scalars.jsonl").read_text().splitlines()
        records[name] = [json.loads(line) for line in lines]
    assert [r["step"] for r in records["b"]] == list(range(1, 8))
    assert [r["loss/total"] for r in records["b"]] == [r["loss/total"] for r in records["a"]]
    if queue:  # the checkpoints hold both branches' queues, full, as the run left them
        step4 = _params(tmp_path / "b" / "tiny" / "checkpoints" / "step_00000004.pt")
        for branch in ("global_loss", "local_loss"):
            assert step4["heads"][f"{branch}.queue.count"].item() == 20
            rows = step4["heads"][f"{branch}.queue.embeddings"]
            assert rows.shape == (20, 64) and rows.dtype == torch.float32
            torch.testing.assert_close(rows.norm(dim=1), torch.ones(20))  # normalised keys
            assert not torch.equal(rows, a["heads"][f"{branch}.queue.embeddings"])  # it moves


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    run_pretrain(tiny(tmp_path, "train.max_steps=1"))
    with pytest.raises(
        ValueError,
        match=r"different architecture.*shape mismatches.*layer1\.0\.conv1\.weight|different architecture.*missing keys \(\d+\): backbone\.layer",
    ):
        run_pretrain(tiny(tmp_path, "train.max_steps=2", "model.arch=resnet50", "run.resume=auto"))


def test_a_checkpoint_with_another_queue_size_is_refused(tmp_path):
    run_pretrain(tiny(tmp_path, "train.max_steps=1", "method.name=global_style"))
    with pytest.raises(
        ValueError,
        match=r"different architecture or method.*missing keys \(3\): global_loss\.queue",
    ):
        run_pretrain(tiny(tmp_path, "train.max_steps=2", "method.name=global_style",
                          "method.queue_size=8", "run.resume=auto"))  # fmt: skip


def test_nan_loss_stops_with_step_and_parts_and_keeps_checkpoints(tmp_path, monkeypatch):
    original = PretrainModel.forward
    calls = {"n": 0}

    def nan_on_third(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            nan = out["total"] * float("nan")
            return {**out, "total": nan, "local": nan}
        return out

    monkeypatch.setattr(PretrainModel, "forward", nan_on_third)
    with pytest.raises(
        TrainingDiverged,
        match=r"step 3: the loss is not finite.*'local': nan.*step_00000002\.pt is intact",
    ):
        run_pretrain(tiny(tmp_path, "train.max_steps=5", "run.checkpoint_every=2"))
    (ckpt,) = list_checkpoints(tmp_path / "tiny" / "checkpoints")
    assert torch.load(ckpt, weights_only=True)["step"] == 2


def test_an_overflowing_batchnorm_buffer_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch):
    # what a huge learning rate does: the loss is still finite, a BN running variance not
    original = PretrainModel.forward
    calls = {"n": 0}

    def inf_variance_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            self.net.backbone.layer3[1].bn2.running_var[0] = float("inf")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PretrainModel, "forward", inf_variance_on_third)
    with pytest.raises(
        TrainingDiverged,
        match=r"step 3: the BatchNorm statistics net\.backbone\.layer3\.1\.bn2\.running_var are "
        r"not finite.*newest checkpoint .*step_00000002\.pt is intact.*Lower optim\.lr",
    ):
        run_pretrain(tiny(tmp_path, "train.max_steps=4", "run.checkpoint_every=1"))
    names = sorted(p.name for p in (tmp_path / "tiny" / "checkpoints").iterdir())
    assert names == [
        "step_00000001.pt", "step_00000001.pt.sha256", "step_00000002.pt", "step_00000002.pt.sha256"
    ]  # fmt: skip


def test_band_count_and_stats_errors(tmp_path):
    with pytest.raises(ValueError, match=r"model\.in_channels is 3 but the data has 4 band"):
        run_pretrain(tiny(tmp_path, "model.in_channels=3"))
    stats = tmp_path / "stats.yaml"
    stats.write_text(
        yaml.safe_dump({"mean": [0.5] * 3, "std": [0.2] * 3, "count": 1, "scale": 255.0})
    )
    with pytest.raises(ValueError, match=r"stats\.yaml: 3 mean values but the data has 4 band"):
        run_pretrain(tiny(tmp_path, f"normalize.stats_file={stats}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_process(rank, world, port, root, *extra):
    """torchrun's environment for this spawned process, and the 2-process test config."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
        RANK=str(rank), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    return load_pretrain_config(
        None, [*TINY, *DDP_SETTINGS, f"run.root={root}", "run.name=ddp", *extra]
    )


def _run_reporting(config, rank, queue):
    """Run ``config``; put ``(rank, error type or None, message)`` on ``queue``."""
    try:
        run_pretrain(config)
    except Exception as err:
        queue.put((rank, type(err).__name__, str(err)))
        raise SystemExit(1) from None
    queue.put((rank, None, ""))


def _spawn_two_reporting(worker, tmp_path):
    """Run ``worker`` in 2 spawned processes; their exit codes and ``{rank: (type, message)}``."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert not any(p.is_alive() for p in procs)
    errors = {rank: (kind, message) for rank, kind, message in (queue.get() for _ in range(2))}
    return [p.exitcode for p in procs], errors


def _ddp_worker(rank, world, port, root, queue):
    config = _ddp_process(rank, world, port, root)
    result = run_pretrain(config)
    queue.put((rank, result.history[0]["loss/total"]))


def _ddp_failing_save_worker(rank, world, port, root, queue):
    import contrastseg.train.loop as engine

    def disk_full(payload, path):
        raise OSError(28, "No space left on device", str(path))

    if rank == 0:
        engine.save_atomic = disk_full
    _run_reporting(_ddp_process(rank, world, port, root), rank, queue)


def _ddp_bad_probe_worker(rank, world, port, root, queue):
    if rank == 1:  # the probe's data is rank 0's to read
        import contrastseg.train.pretrain as engine

        def read_on_rank_1(*args):
            raise AssertionError("rank 1 read the probe's data")

        engine.check_probe = read_on_rank_1
    config = _ddp_process(
        rank, world, port, root, "run.name=probe", "probe.every=1", "probe.data.preset=dubai",
        f"probe.data.root={root}/missing",
    )  # fmt: skip
    _run_reporting(config, rank, queue)


DDP_SETTINGS = [
    "method.name=global_style",
    "train.max_steps=1",
    "model.aspp_dropout=0.0",
    "train.device=cpu",
]


def test_two_process_run_matches_one_process_on_the_combined_batch(tmp_path):
    """2 gloo processes: per-rank BatchNorm, views from each rank's generator, negatives
    gathered from both ranks. The oracle recomputes that first step in one process on the
    combined batch, with the global NT-Xent over all 2 x 4 images."""
    from torch.utils.data import DistributedSampler

    from contrastseg.augment import PairedViews
    from contrastseg.data import UnlabeledDataset
    from contrastseg.data.loader import to_float
    from contrastseg.losses.ntxent import nt_xent
    from contrastseg.losses.style import style_vector
    from contrastseg.train.pretrain import views_generator
    from contrastseg.train.runtime import seed_everything

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [
        ctx.Process(target=_ddp_worker, args=(r, 2, port, str(tmp_path), queue)) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    losses = dict(queue.get() for _ in range(2))
    assert losses[0] == pytest.approx(losses[1])  # the logged loss is the global mean

    config = load_pretrain_config(None, [*TINY, *DDP_SETTINGS])
    device = torch.device("cpu")
    seed_everything(config.train.seed, False, device)
    dataset = UnlabeledDataset(config.data)
    model = PretrainModel(config.model, config.method, dataset.num_bands).to(
        memory_format=torch.channels_last
    )
    views = PairedViews(config.views)
    z1s, z2s = [], []
    for rank in range(2):
        sampler = DistributedSampler(
            dataset, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True
        )
        sampler.set_epoch(0)
        dataset.set_epoch(0)
        indices = list(sampler)[: config.train.batch_size]
        images = to_float(torch.stack([torch.from_numpy(dataset.read(i).copy()) for i in indices]))
        pair = views(images, views_generator(config.train.seed, rank, device))
        e1 = model.net.forward_features(
            pair.view1.contiguous(memory_format=torch.channels_last), decoder=False
        ).encoder
        e2 = model.net.forward_features(
            pair.view2.contiguous(memory_format=torch.channels_last), decoder=False
        ).encoder
        z = model.method.global_loss.head(torch.cat([style_vector(e1), style_vector(e2)]))
        z1s.append(z[:4])
        z2s.append(z[4:])
    expected = nt_xent(torch.cat(z1s), torch.cat(z2s), config.method.temperature).item()
    assert losses[0] == pytest.approx(expected, rel=1e-4)


def test_resume_guards(tmp_path):
    run_pretrain(tiny(tmp_path, "train.max_steps=4", "run.checkpoint_every=2", "run.keep_last=5"))
    older = tmp_path / "tiny" / "checkpoints" / "step_00000002.pt"
    with pytest.raises(
        ValueError, match=r"holds checkpoints newer than step_00000002\.pt \(step_00000004\.pt\)"
    ):
        run_pretrain(tiny(tmp_path, "train.max_steps=6", f"run.resume={older}"))
    assert older.is_file()  # nothing was pruned
    with pytest.raises(ValueError, match=r"run\.resume=auto needs a run\.name"):
        run_pretrain(tiny(tmp_path, "run.name=", "run.resume=auto"))


def test_cli_flag_values_stay_text(tmp_path):
    """A run named 2024 is a name, not the integer 2024."""
    assert (
        main(
            [
                "pretrain",
                *set_args([*TINY, f"run.root={tmp_path}", "train.max_steps=1"]),
                "--name",
                "2024",
            ]
        )
        == 0
    )
    assert (tmp_path / "2024" / "config.yaml").is_file()


def test_a_failed_save_on_rank_0_stops_every_rank(tmp_path):
    """Rank 0 cannot write its checkpoint: both ranks stop with an error at once, rather than
    rank 1 waiting at a barrier until the backend times out."""
    exitcodes, errors = _spawn_two_reporting(_ddp_failing_save_worker, tmp_path)
    assert exitcodes == [1, 1]
    assert errors[0][0] == "OSError" and "No space left" in errors[0][1]
    assert errors[1][0] == "RuntimeError" and "rank 0 could not write the step-1" in errors[1][1]


def test_a_bad_probe_section_stops_every_rank_with_rank_0s_message(tmp_path):
    """Only rank 0 reads the probe's data; the other rank gets its verdict, so both stop
    before the first step with the same message, and no process waits for another."""
    exitcodes, errors = _spawn_two_reporting(_ddp_bad_probe_worker, tmp_path)
    assert exitcodes == [1, 1]
    assert errors[0] == errors[1]
    assert errors[0][0] == "ConfigError" and "missing' does not exist" in errors[0][1]
    assert not (tmp_path / "probe").exists()


def _float_scenes(folder, tag: bool) -> None:
    """Two float32 4-band scenes whose left quarter is nodata (-9999) and with one NaN pixel."""
    import numpy as np
    import tifffile

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        array = rng.random((64, 64, 4), dtype=np.float32)
        array[:, :16] = -9999.0
        array[30, 40, 2] = np.nan
        extratags = [(42113, "s", 0, "-9999", False)] if tag else []
        tifffile.imwrite(folder / f"s{i}.tif", array, photometric="minisblack",
                         planarconfig="contig", extratags=extratags)  # fmt: skip


def test_nodata_geotiffs_pretrain_with_finite_losses(tmp_path, capsys):
    _float_scenes(tmp_path / "tagged", tag=True)
    result = run_pretrain(
        tiny(
            tmp_path,
            f"data.roots=['{tmp_path / 'tagged'}']",
            "train.max_steps=3",
            "data.coverage=4.0",
            "run.image_every=1",
        )
    )
    assert result.step == 3
    assert all(math.isfinite(h["loss/total"]) for h in result.history)
    # NaN pixels without a nodata value stop the run before step 1, naming file and count
    _float_scenes(tmp_path / "untagged", tag=False)
    code = main(["pretrain", *set_args(TINY), "--set", f"run.root={tmp_path}", "--name", "nan",
                 "--set", f"data.roots=['{tmp_path / 'untagged'}']"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"untagged/s[01]\.tif' has 1 NaN pixel\(s\) in window", err), err


def test_resume_says_when_it_starts_fresh_or_the_batch_size_changed(tmp_path):
    run_pretrain(tiny(tmp_path, "train.max_steps=1", "run.resume=auto"))
    log = (tmp_path / "tiny" / "train.log").read_text()
    assert "--resume found no intact checkpoint in the run folder: starting fresh" in log
    run_pretrain(tiny(tmp_path, "train.max_steps=2", "run.resume=auto", "train.batch_size=2"))
    log = (tmp_path / "tiny" / "train.log").read_text()
    assert "warning: train.batch_size is 2 but the checkpoint was written with 4" in log


def test_collapsed_embeddings_are_reported_and_can_stop_the_run(tmp_path, monkeypatch):
    # Every image maps to the same embedding (the head's output bias only): what a collapsed
    # run looks like. (Runs with huge learning rates did not collapse within a few CPU steps:
    # the BatchNorm layers keep the embeddings spread; the loss sat at chance level instead.)
    from contrastseg.models.heads import ProjectionHead

    monkeypatch.setattr(
        ProjectionHead, "forward", lambda self, x: self.layers(x) * 0 + self.layers[-1].bias
    )
    config = tiny(
        tmp_path, "method.name=global_style", "train.max_steps=8", "train.collapse_patience=2",
        "train.stop_on_collapse=true", "run.checkpoint_every=100",
    )  # fmt: skip
    result = run_pretrain(config)
    assert result.step == 2  # stopped at the second log step below the threshold
    assert [r["health/global/std"] for r in result.history] == pytest.approx([0, 0], abs=1e-6)
    log = (tmp_path / "tiny" / "train.log").read_text()
    assert "step 2: the global embeddings have collapsed" in log and "since step 1" in log
    assert "stopping (train.stop_on_collapse)" in log
    assert [p.name for p in list_checkpoints(tmp_path / "tiny" / "checkpoints")] == [
        "step_00000002.pt"
    ]


def test_a_learning_rate_that_collapses_the_run_is_reported(tmp_path):
    # The local branch with a head without BatchNorm (BatchNorm in the head keeps embeddings
    # spread even at absurd learning rates): Adam at lr 3 collapses it within a few steps, the
    # quickstart's lr 1e-3 does not. The report names the step and the run stops when asked.
    common = ["method.name=local", "method.head_batch_norm=false", "train.max_steps=12",
              "train.collapse_patience=3", "run.checkpoint_every=100"]  # fmt: skip
    healthy = run_pretrain(tiny(tmp_path, *common, "run.name=healthy"))
    assert healthy.step == 12
    assert min(r["health/local/std"] for r in healthy.history) > 0.2
    assert "collapsed" not in (tmp_path / "healthy" / "train.log").read_text()

    result = run_pretrain(tiny(tmp_path, *common, "optim.lr=3.0", "train.stop_on_collapse=true"))
    assert result.step < 12
    assert result.history[-1]["health/local/std"] < 0.1
    log = (tmp_path / "tiny" / "train.log").read_text()
    found = re.search(r"step (\d+): the local embeddings have collapsed:.*since step (\d+)", log)
    assert found, log
    reported, since = int(found[1]), int(found[2])
    assert reported == result.step and reported - since == 2  # 3 log steps below the threshold
    assert all(r["health/local/std"] < 0.1 for r in result.history[since - 1 :])
    assert "stopping (train.stop_on_collapse)" in log


def test_healthy_embeddings_are_logged_for_every_branch(tmp_path):
    result = run_pretrain(tiny(tmp_path, "train.max_steps=2"))  # glcnet: global and local
    record = result.history[-1]
    for branch in ("global", "local"):
        for stat in ("std", "pos_cos", "neg_cos", "alignment", "uniformity"):
            assert f"health/{branch}/{stat}" in record
        assert record[f"health/{branch}/std"] > 0.2  # not collapsed at the start
    assert "collapsed" not in (tmp_path / "tiny" / "train.log").read_text()


def test_the_collapse_streak_skips_nan_and_reports_a_recovery():
    from contrastseg.train.pretrain import CollapseStreak

    nan = float("nan")
    streak = CollapseStreak(threshold=0.1, patience=3)
    # a NaN spread (too few valid pairs to measure) neither extends nor breaks the streak
    events = [streak.update(s, v) for s, v in enumerate([0.05, nan, 0.02, 0.01, 0.0], 1)]
    assert events == [None, None, None, "collapsed", None] and streak.since == 1
    assert streak.update(6, nan) is None and streak.since == 1  # still collapsed
    assert streak.update(7, 0.1) == "recovered" and streak.since is None and streak.low == []
    assert streak.update(8, 0.5) is None  # reported once
    # a value at or above the threshold ends a streak before it is reported
    fresh = CollapseStreak(threshold=0.1, patience=2)
    assert [fresh.update(s, v) for s, v in enumerate([0.0, 0.3, 0.0, nan, 0.0], 1)] == [
        None, None, None, None, "collapsed"
    ]  # fmt: skip
    assert fresh.since == 3


def test_a_collapse_that_recovers_is_reported_and_training_goes_on(tmp_path, monkeypatch):
    # the global embeddings collapse for steps 1-2 (the head's bias only) and then train
    from contrastseg.models.heads import ProjectionHead
    from contrastseg.train.loop import TrainingLoop

    step = {"n": 0}
    original_forward, original_head = PretrainModel.forward, ProjectionHead.forward

    def counting(self, *args, **kwargs):
        step["n"] += 1
        return original_forward(self, *args, **kwargs)

    def collapsing_head(self, x):
        if step["n"] <= 2:
            return self.layers(x) * 0 + self.layers[-1].bias
        return original_head(self, x)

    statuses = []
    original_report = TrainingLoop._report

    def recording(self, step, values, steps, status):
        statuses.append(dict(status))
        return original_report(self, step, values, steps, status)

    monkeypatch.setattr(PretrainModel, "forward", counting)
    monkeypatch.setattr(ProjectionHead, "forward", collapsing_head)
    monkeypatch.setattr(TrainingLoop, "_report", recording)
    config = tiny(
        tmp_path, "method.name=global_style", "train.max_steps=5", "train.collapse_patience=2",
        "train.stop_on_collapse=false", "run.checkpoint_every=100",
    )  # fmt: skip
    result = run_pretrain(config)
    assert result.step == 5  # not stopped: train.stop_on_collapse is false
    spreads = [r["health/global/std"] for r in result.history]
    assert spreads[:2] == pytest.approx([0, 0], abs=1e-6) and min(spreads[2:]) > 0.1
    log = (tmp_path / "tiny" / "train.log").read_text()
    assert "step 2: the global embeddings have collapsed" in log and "stopping" not in log
    assert re.search(
        r"step 3: the global embeddings have recovered: their spread health/global/std=0\.\d+ "
        r"is back at or above train\.collapse_std=0\.1 \(collapsed since step 1\)",
        log,
    ), log
    # the progress bar's COLLAPSED field is shown at step 2 only
    assert statuses == [{}, {"COLLAPSED": "global since step 1"}, {}, {}, {}]
    assert [p.name for p in list_checkpoints(tmp_path / "tiny" / "checkpoints")] == [
        "step_00000005.pt"
    ]


def test_health_statistics_are_computed_on_logged_steps_only(tmp_path, monkeypatch):
    """The health entries come from the logged step alone; the losses stay window means."""
    from contrastseg.train.pretrain_task import PretrainTask

    outputs = {}
    original = PretrainTask.on_step_end

    def record(self, step, out):
        outputs[step] = {k: float(v.detach()) for k, v in out.items()}
        return original(self, step, out)

    monkeypatch.setattr(PretrainTask, "on_step_end", record)
    config = tiny(tmp_path, "train.max_steps=5", "run.log_every=2")
    run_pretrain(config)
    health = {s: sorted(k for k in out if k.startswith("health/")) for s, out in outputs.items()}
    assert health[1] == health[3] == [] and health[2] == health[4] == health[5]
    assert "health/local/std" in health[2] and "health/global/std" in health[2]
    lines = {
        line["step"]: line
        for line in map(json.loads, (tmp_path / "tiny" / "scalars.jsonl").read_text().splitlines())
    }
    assert sorted(lines) == [2, 4, 5]
    for step, first in ((2, 1), (4, 3)):
        for key in health[step]:
            assert lines[step][key] == pytest.approx(outputs[step][key], rel=1e-5)
        expected = (outputs[first]["total"] + outputs[step]["total"]) / 2
        assert lines[step]["loss/total"] == pytest.approx(expected, rel=1e-5)
    assert lines[5]["health/global/std"] == pytest.approx(outputs[5]["health/global/std"], rel=1e-5)
