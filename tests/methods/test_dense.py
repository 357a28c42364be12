"""The dense method: its loss against a numpy transcription, and a pretraining run end to end."""

import json

import numpy as np
import torch

from contrastseg.augment.config import ViewsConfig
from contrastseg.augment.views import PairedViews
from contrastseg.config import load_pretrain_config, model_config
from contrastseg.methods import method_config
from contrastseg.train.model import PretrainModel
from contrastseg.train.pretrain import run_pretrain
from contrastseg.train.probe import default_features, trained_parts


def nt_xent_numpy(z1, z2, temperature):
    """SimCLR's NT-Xent (eq. 1), mean over the 2N anchors, written out with numpy."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [sim[i, k] for k in range(2 * n) if k != i]
        losses.append(-sim[i, positive] + np.log(np.sum(np.exp(others))))
    return float(np.mean(losses))


def test_dense_loss_equals_nt_xent_over_the_matched_cells():
    torch.manual_seed(0)
    config = method_config("dense", lam=0.0, cells_per_image=8, head_batch_norm=False, gather=False)
    model = PretrainModel(
        model_config(arch="resnet18", aspp_channels=16, decoder_channels=12), config, 3
    )
    model.eval()
    views = PairedViews(ViewsConfig(size=32, rgb_bands=None))
    pair = views(torch.rand(3, 3, 40, 40), torch.Generator().manual_seed(1))
    inputs = model.prepare(pair, torch.Generator().manual_seed(2), 40 * 40)
    with torch.no_grad():
        out = model(pair.view1, pair.view2, **inputs)
        f1 = model.net.forward_features(pair.view1).decoder
        f2 = model.net.forward_features(pair.view2).decoder
    points = inputs["points"]
    z1, z2 = [], []
    for b in range(3):  # oracle: the cell under each valid point, by plain indexing
        for k in range(8):
            if points.valid[b, k]:
                (x1, y1), (x2, y2) = points.points1[b, k].tolist(), points.points2[b, k].tolist()
                z1.append(f1[b, :, int(y1 // 4), int(x1 // 4)])
                z2.append(f2[b, :, int(y2 // 4), int(x2 // 4)])
    head = model.method.dense_loss.head
    with torch.no_grad():
        e1, e2 = head(torch.stack(z1)).numpy(), head(torch.stack(z2)).numpy()
    assert len(z1) > 8  # several images' cells contrast with each other
    health = {f"health/dense/{k}" for k in ("std", "pos_cos", "neg_cos", "alignment", "uniformity")}
    assert set(out) == {"total", "dense", "dense/valid_fraction", *health}
    np.testing.assert_allclose(float(out["dense"]), nt_xent_numpy(e1, e2, 0.5), rtol=1e-5)
    assert float(out["dense/valid_fraction"]) == len(z1) / 24


def test_dense_with_the_global_branch_weighs_both():
    torch.manual_seed(0)
    config = method_config("dense", lam=0.25, cells_per_image=4, gather=False)
    model = PretrainModel(
        model_config(arch="resnet18", aspp_channels=16, decoder_channels=12), config, 3
    )
    pair = PairedViews(ViewsConfig(size=32, rgb_bands=None))(
        torch.rand(4, 3, 40, 40), torch.Generator().manual_seed(1)
    )
    out = model(
        pair.view1, pair.view2, **model.prepare(pair, torch.Generator().manual_seed(2), 1600)
    )
    torch.testing.assert_close(out["total"], 0.25 * out["global"] + 0.75 * out["dense"])
    out["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_dense_pretraining_runs_and_logs_its_losses(tmp_path):
    config = load_pretrain_config(
        None,
        [
            f"run.root={tmp_path}", "run.name=dense", "run.progress=false", "run.image_every=0",
            "run.log_every=1", "train.max_steps=2", "train.batch_size=4", "train.num_workers=0",
            "data.demo.n_scenes=4", "data.demo.size=64", "data.patch_size=48", "views.size=32",
            "method.name=dense", "method.cells_per_image=16", "model.arch=resnet18",
            "model.aspp_channels=16", "model.decoder_channels=16",
        ],
    )  # fmt: skip
    result = run_pretrain(config)
    records = [
        json.loads(line) for line in (result.run_dir / "scalars.jsonl").read_text().splitlines()
    ]
    assert {"loss/total", "loss/dense", "loss/global", "dense/valid_fraction"} <= set(records[-1])
    assert all(np.isfinite(r["loss/total"]) for r in records)
    payload = torch.load(result.checkpoint, weights_only=True)
    assert default_features(trained_parts(payload["model"], payload)) == "decoder"
