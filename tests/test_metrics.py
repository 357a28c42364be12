import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from contrastseg.metrics import ConfusionMatrix

K = 6
IGNORE = 255


def batches(seed: int = 0, n: int = 3):
    """Random predictions/targets: class 4 only in the target, class 3 only in the
    prediction, class 5 in neither; 15 % of the pixels ignored."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        target = torch.randint(0, 5, (2, 7, 9), generator=gen)
        target[target == 3] = 0
        pred = torch.where(
            torch.rand(2, 7, 9, generator=gen) < 0.5,
            target,
            torch.randint(0, 4, (2, 7, 9), generator=gen),
        )
        target[torch.rand(2, 7, 9, generator=gen) < 0.15] = IGNORE
        out.append((pred, target))
    return out


def test_agrees_with_torchmetrics_with_ignored_pixels_and_absent_classes():
    data = batches()
    cm = ConfusionMatrix(K)
    tm = {
        "miou": MulticlassJaccardIndex(K, average="macro", ignore_index=IGNORE),
        "kappa": MulticlassCohenKappa(K, ignore_index=IGNORE),
        "oa": MulticlassAccuracy(K, average="micro", ignore_index=IGNORE),
        "f1": MulticlassF1Score(K, average="none", ignore_index=IGNORE),
        "precision": MulticlassPrecision(K, average="none", ignore_index=IGNORE),
        "recall": MulticlassRecall(K, average="none", ignore_index=IGNORE),
        "iou": MulticlassJaccardIndex(K, average="none", ignore_index=IGNORE),
        "mean_f1": MulticlassF1Score(K, average="macro", ignore_index=IGNORE),
    }
    for pred, target in data:
        cm.update(pred, target)
        for metric in tm.values():
            metric.update(pred, target)
    res = cm.compute()
    ref = {k: m.compute() for k, m in tm.items()}
    # torchmetrics' macro Jaccard drops classes absent from target and prediction, as we do.
    assert res["miou"] == pytest.approx(ref["miou"].item(), rel=1e-6)
    assert res["kappa"] == pytest.approx(ref["kappa"].item(), rel=1e-6)
    assert res["overall_accuracy"] == pytest.approx(ref["oa"].item(), rel=1e-6)
    assert res["scored_classes"] == [0, 1, 2, 3, 4]
    for key in ("f1", "precision", "recall", "iou"):
        ours = res["per_class"][key]
        assert ours[5] is None  # absent from both: not scored (torchmetrics reports 0)
        np.testing.assert_allclose(ours[:5], ref[key][:5].numpy(), rtol=1e-6)
    # class 3 is never in the target: recall 0 (a zero denominator scores 0, as torchmetrics)
    assert res["per_class"]["recall"][3] == 0.0 and res["per_class"]["f1"][3] == 0.0
    # torchmetrics' macro F1 weights classes by presence too: the mean of our 5 scored classes
    assert res["mean_f1"] == pytest.approx(ref["f1"][:5].mean().item(), rel=1e-6)
    assert res["mean_f1"] == pytest.approx(ref["mean_f1"].item(), rel=1e-6)


def test_hand_computed_matrix():
    # rows = truth, columns = prediction
    target = torch.tensor([[0, 0, 0, 1, 1, 2, IGNORE]])
    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    res = cm.compute(exclude=[2])
    assert res["per_class"]["iou"][:3] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert res["per_class"]["f1"][:3] == pytest.approx([4 / 5, 2 / 4, 2 / 3])
    assert res["miou"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # class 2 excluded, class 3 absent
    assert res["overall_accuracy"] == pytest.approx(4 / 6)
    p_e = (3 * 2 + 2 * 2 + 1 * 2) / 36
    assert res["kappa"] == pytest.approx((4 / 6 - p_e) / (1 - p_e))
    assert res["num_pixels"] == 6 and res["excluded_classes"] == [2]


def test_logits_are_argmaxed_and_reset_clears():
    pred, target = batches(seed=1, n=1)[0]
    logits = torch.nn.functional.one_hot(pred, K).permute(0, 3, 1, 2).float() * 3 + torch.rand(
        2, K, 7, 9
    )
    a, b = ConfusionMatrix(K), ConfusionMatrix(K)
    a.update(logits, target)
    b.update(pred, target)
    assert torch.equal(a.matrix, b.matrix) and a.matrix.dtype == torch.int64
    a.reset()
    assert a.matrix.sum() == 0
    res = a.compute()
    assert res["miou"] is None and res["overall_accuracy"] is None and res["kappa"] is None


def test_perfect_single_class_kappa_and_json():
    cm = ConfusionMatrix(3)
    cm.update(torch.ones(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long))
    res = cm.to_dict(class_names=["a", "b", "c"])
    assert res["kappa"] == 1.0 and res["miou"] == 1.0 and res["scored_classes"] == [1]
    assert json.loads(json.dumps(res))["class_names"] == ["a", "b", "c"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in res["per_class"]["iou"])


def test_format_table_reads_per_class():
    pred, target = batches(seed=2, n=1)[0]
    cm = ConfusionMatrix(K)
    cm.update(pred, target)
    names = ["impervious", "building", "low_veg", "tree", "car", "clutter"]
    table = cm.format_table(names, exclude=[5])
    lines = table.splitlines()
    res = cm.compute(exclude=[5])
    car = next(line for line in lines if line.startswith("car"))
    assert f"{100 * res['per_class']['iou'][4]:.2f}" in car
    clutter = next(line for line in lines if line.startswith("clutter"))
    assert clutter.split()[1] == "-" and "(excluded)" in clutter
    assert f"mIoU {100 * res['miou']:.2f}" in lines[-1]


def test_errors_name_shapes_and_values():
    cm = ConfusionMatrix(4)
    target = torch.zeros(2, 5, 5, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"prediction shape \(2, 5, 4\) does not match target shape \(2, 5, 5\)"
    ):
        cm.update(torch.zeros(2, 5, 4, dtype=torch.long), target)
    with pytest.raises(
        ValueError, match=r"target must hold integer class indices, got dtype torch\.float32"
    ):
        cm.update(target, target.float())
    bad = target.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"target has \[9\], prediction has \[\]"):
        cm.update(target, bad)
    with pytest.raises(ValueError, match=r"target has \[\], prediction has \[-1\]"):
        cm.update(target - 1, target)
    with pytest.raises(ValueError, match=r"scores \(B, 4, H, W\), got shape \(2, 3, 5, 5\)"):
        cm.update(torch.randn(2, 3, 5, 5), target)
    with pytest.raises(ValueError, match="exclude"):
        cm.compute(exclude=[4])
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    assert cm.matrix.sum() == 0  # failed updates add nothing


def test_all_reduce_without_process_group_is_a_noop():
    pred, target = batches(seed=3, n=1)[0]
    cm = ConfusionMatrix(K)
    cm.update(pred, target)
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(K)
        for i, (pred, target) in enumerate(batches(seed=4, n=4)):
            if i % world == rank:
                cm.update(pred, target)
        cm.all_reduce()
        if rank == 0:
            torch.save(cm.matrix, out_file)
    finally:
        dist.destroy_process_group()


def test_ddp_merge_equals_single_process(tmp_path):
    out = tmp_path / "matrix.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    merged = torch.load(out, weights_only=True)
    single = ConfusionMatrix(K)
    for pred, target in batches(seed=4, n=4):
        single.update(pred, target)
    assert torch.equal(merged, single.matrix)


# --- embedding health -------------------------------------------------------------------


def test_identical_embeddings_are_collapsed():
    from contrastseg.metrics import embedding_health

    z = torch.tensor([[0.3, -1.2, 2.0, 0.5]]).repeat(6, 1)
    out = embedding_health(z, z.clone())
    assert float(out["std"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["pos_cos"]) == pytest.approx(1.0) and float(out["neg_cos"]) == pytest.approx(
        1.0
    )
    assert float(out["alignment"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["uniformity"]) == pytest.approx(0.0, abs=1e-6)  # its maximum


def test_orthonormal_embeddings_give_the_analytic_values():
    from contrastseg.metrics import embedding_health

    n = dim = 8
    z = torch.eye(dim) * 3.0  # any scale: normalised inside
    out = embedding_health(z, z.clone())
    # per dimension: two ones among 2n values -> unbiased variance (2 - 2/n) / (2n - 1)
    std = math.sqrt((2 - 2 / n) / (2 * n - 1)) * math.sqrt(dim)
    assert float(out["std"]) == pytest.approx(std, rel=1e-5)
    assert float(out["pos_cos"]) == pytest.approx(1.0)
    assert float(out["neg_cos"]) == pytest.approx(0.0, abs=1e-6)
    # within a view every pair is orthogonal: squared distance 2, log exp(-4) (Wang & Isola's
    # value does not depend on how well the views align)
    assert float(out["uniformity"]) == pytest.approx(-4.0, rel=1e-5)


def test_health_of_random_pairs_matches_a_numpy_transcription():
    from contrastseg.metrics import embedding_health

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(10, 5, generator=g), torch.randn(10, 5, generator=g)
    valid = torch.tensor([True] * 7 + [False] * 3)
    out = embedding_health(z1, z2, valid)
    a = z1[:7].numpy() / np.linalg.norm(z1[:7].numpy(), axis=1, keepdims=True)
    b = z2[:7].numpy() / np.linalg.norm(z2[:7].numpy(), axis=1, keepdims=True)
    z = np.concatenate([a, b])
    assert float(out["std"]) == pytest.approx(z.std(0, ddof=1).mean() * math.sqrt(5), rel=1e-5)
    assert float(out["alignment"]) == pytest.approx(((a - b) ** 2).sum(1).mean(), rel=1e-5)
    pairs = [(i, j) for i in range(14) for j in range(14) if i != j]
    negatives = [(i, j) for i, j in pairs if abs(i - j) != 7]
    assert float(out["neg_cos"]) == pytest.approx(
        np.mean([z[i] @ z[j] for i, j in negatives]), rel=1e-5
    )

    def uniformity(x):  # Wang & Isola: log mean exp(-2 |u - v|^2) over pairs of one view
        sq = [((x[i] - x[j]) ** 2).sum() for i in range(len(x)) for j in range(len(x)) if i != j]
        return np.log(np.mean(np.exp(-2 * np.array(sq))))

    expected = (uniformity(a) + uniformity(b)) / 2
    assert float(out["uniformity"]) == pytest.approx(expected, rel=1e-5)
