"""Evaluation metrics, reports and the case-metrics handler (all CPU, tiny arrays)."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from samsp_monai.evaluation.handlers import CaseMetricsWriter, InferenceOverlays
from samsp_monai.evaluation.metrics import case_metrics, hd95_penalty_mm, spacing_from_affine, summarise
from samsp_monai.evaluation.reports import OVERLAY_PX, save_overlay_png, write_case_csv, write_summary_json

RNG = np.random.default_rng(0)


def box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...], value: int = 1) -> np.ndarray:
    m = np.zeros(shape, dtype=np.int64)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value
    return m


def test_identical_masks_give_dice_one_hd_zero():
    m = box((24, 20, 10), (4, 5, 2), (15, 14, 8))
    (row,) = case_metrics(torch.as_tensor(m), m, (0.8, 0.8, 2.0), [1])
    assert row == {"class_id": 1, "status": "both_present", "dice": 1.0, "iou": 1.0, "hd95_mm": 0.0}


@pytest.mark.parametrize(
    "shape, lo, hi, axis, spacing",
    [
        ((32, 30), (5, 6), (15, 24), 0, (0.7, 1.9)),
        ((24, 22, 16), (4, 5, 3), (18, 17, 8), 2, (0.8, 0.6, 2.5)),
    ],
)
def test_box_shifted_by_d_voxels_gives_hd95_d_times_spacing(shape, lo, hi, axis, spacing):
    # A translation maps every predicted surface voxel onto a GT surface voxel d voxels away, so no
    # distance exceeds d * spacing[axis]; the whole leading face sits exactly that far (>5% of the surface).
    d = 3
    label = box(shape, lo, hi)
    pred = np.roll(label, d, axis=axis)
    (row,) = case_metrics(pred, label, spacing, [1])
    assert row["status"] == "both_present"
    assert row["hd95_mm"] == pytest.approx(d * spacing[axis], rel=1e-6)
    thickness = hi[axis] - lo[axis]
    assert row["dice"] == pytest.approx((thickness - d) / thickness)


def test_missed_and_false_positive_get_finite_penalty():
    shape, spacing = (20, 10, 6), (1.0, 2.0, 3.0)
    label = box(shape, (2, 2, 1), (6, 6, 4))
    empty = np.zeros(shape, dtype=np.int64)
    penalty = math.sqrt(20.0**2 + 20.0**2 + 18.0**2)
    assert hd95_penalty_mm(shape, spacing) == pytest.approx(penalty)
    (missed,) = case_metrics(empty, label, spacing, [1])
    (false_pos,) = case_metrics(label, empty, spacing, [1])
    for row, status in ((missed, "missed"), (false_pos, "false_positive")):
        assert row["status"] == status
        assert (row["dice"], row["iou"]) == (0.0, 0.0)
        assert math.isfinite(row["hd95_mm"]) and row["hd95_mm"] == pytest.approx(penalty)


def test_multiclass_rows_and_summary_by_hand():
    shape = (16, 16)
    label_a = box(shape, (2, 2), (6, 6), 1) + box(shape, (9, 9), (13, 13), 2)
    pred_a = box(shape, (2, 2), (6, 6), 1)  # class 1 exact, class 2 missed
    label_b = box(shape, (2, 2), (6, 10), 1)
    pred_b = box(shape, (2, 2), (6, 6), 1)  # class 1 half found, class 2 absent on both sides
    rows_a = case_metrics(pred_a, label_a, (1.0, 1.0), [1, 2])
    rows_b = case_metrics(pred_b, label_b, (1.0, 1.0), [1, 2])
    assert [r["class_id"] for r in rows_a] == [1, 2]
    assert [r["status"] for r in rows_a + rows_b] == ["both_present", "missed", "both_present", "both_empty"]
    assert rows_b[0]["dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert rows_b[0]["iou"] == pytest.approx(0.5)
    assert rows_b[1] == {"class_id": 2, "status": "both_empty", "dice": 1.0, "iou": 1.0, "hd95_mm": 0.0}

    s = summarise(rows_a + rows_b)
    c1, c2 = s["classes"]["1"], s["classes"]["2"]
    assert c1["dice"]["mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert c1["dice"]["std"] == pytest.approx((1 - 2 / 3) / 2)
    assert c1["hd95_mm"]["mean"] == pytest.approx(rows_b[0]["hd95_mm"] / 2)
    # the both-empty row is counted but not averaged: class 2's mean is the missed case alone
    assert (c2["n_cases"], c2["n_evaluated"]) == (2, 1)
    assert c2["status_counts"] == {"both_present": 0, "missed": 1, "false_positive": 0, "both_empty": 1}
    assert c2["dice"] == {"mean": 0.0, "median": 0.0, "std": 0.0}
    assert c2["hd95_mm"]["mean"] == pytest.approx(hd95_penalty_mm(shape, (1.0, 1.0)))
    assert s["overall"]["dice"] == pytest.approx(((1 + 2 / 3) / 2 + 0.0) / 2)
    assert s["status_counts"] == {"both_present": 2, "missed": 1, "false_positive": 0, "both_empty": 1}


def test_summary_of_only_both_empty_has_no_nan():
    s = summarise(case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), (1.0, 1.0), [1]))
    assert s["classes"]["1"]["dice"]["mean"] is None
    assert s["overall"] == {"dice": None, "iou": None, "hd95_mm": None}


def test_spacing_from_rotated_flipped_affine():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 3.0])
    assert spacing_from_affine(torch.as_tensor(affine)) == pytest.approx((0.7, 0.9, 3.0))
    assert spacing_from_affine(np.diag([0.5, 2.0, 1.0])) == pytest.approx((0.5, 2.0))


def test_csv_and_json_round_trip(tmp_path):
    rows = [
        {"case": "a", **r} for r in case_metrics(box((8, 8), (1, 1), (4, 4)), box((8, 8), (1, 1), (4, 5)), (1, 1), [1])
    ]
    write_case_csv(rows, tmp_path / "out" / "cases.csv")
    with open(tmp_path / "out" / "cases.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["case", "class_id", "status", "dice", "iou", "hd95_mm"]
    assert float(read[0]["dice"]) == pytest.approx(rows[0]["dice"])
    write_summary_json(summarise(rows), tmp_path / "out" / "summary.json")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["classes"]["1"]["n_evaluated"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cases.csv", "summary.json"]  # no temp left
    with pytest.raises(ValueError):
        write_summary_json({"x": float("nan")}, tmp_path / "out" / "bad.json")


@pytest.mark.parametrize(
    "image, label_shape",
    [(RNG.random((20, 16, 8)), (20, 16, 8)), (RNG.random((3, 24, 18)), (24, 18))],
    ids=["grey-volume", "rgb-2d"],
)
def test_overlay_png(tmp_path, image, label_shape):
    label = box(label_shape, (3,) * len(label_shape), (9,) * len(label_shape))
    pred = np.roll(label, 2, axis=0)
    path = tmp_path / "overlays" / "case.png"
    save_overlay_png(image, label, pred, path, [1], title="case")
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.size == (OVERLAY_PX, OVERLAY_PX)


def test_handler_writes_reports_and_state_metrics(tmp_path):
    from ignite.engine import Engine

    spacing = (0.8, 0.8, 2.0)
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))

    def item(name: str, shift: int) -> dict[str, MetaTensor]:
        label = box((16, 16, 6), (3, 3, 1), (11, 11, 5))
        meta = {"filename_or_obj": f"/data/{name}.nii.gz"}
        return {
            k: MetaTensor(torch.as_tensor(v[None]), affine=affine, meta=dict(meta))
            for k, v in (("image", RNG.random((16, 16, 6))), ("label", label), ("pred", np.roll(label, shift, 0)))
        }

    data = [[item("case_a", 0)], [item("case_b", 2)]]
    engine = Engine(lambda engine, batch: batch)
    CaseMetricsWriter(tmp_path, {1: "organ"}, num_overlays=1).attach(engine)
    engine.run(data, max_epochs=1)

    with open(tmp_path / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["class_name"], r["status"]) for r in rows] == [
        ("case_a", "organ", "both_present"),
        ("case_b", "organ", "both_present"),
    ]
    assert float(rows[1]["hd95_mm"]) == pytest.approx(2 * 0.8)
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    assert summary["classes"]["1"]["n_evaluated"] == 2
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["case_a.png"]
    assert engine.state.metrics["eval_dice"] == pytest.approx((1 + 6 / 8) / 2)
    assert engine.state.metrics["eval_hd95_mm"] == pytest.approx(0.8)
    assert set(engine.state.metrics) == {"eval_dice", "eval_iou", "eval_hd95_mm"}


def test_hd95_ignores_a_lone_outlier_that_the_maximum_distance_would_report():
    label = box((40, 40), (2, 2), (22, 22))
    pred = label.copy()
    pred[38, 38] = 1  # one voxel of ~114 surface voxels, about 22 voxels away: beyond the 95th percentile
    (row,) = case_metrics(pred, label, (1.0, 1.0), [1])
    assert row["hd95_mm"] == 0.0


@pytest.mark.parametrize("affine", [np.zeros((3, 4)), np.eye(1), np.zeros((2, 2, 2))])
def test_spacing_from_a_non_square_affine_is_refused(affine):
    with pytest.raises(ValueError, match="square"):
        spacing_from_affine(affine)


def test_spacing_of_a_1d_affine():
    assert spacing_from_affine(np.array([[0.5, 3.0], [0.0, 1.0]])) == (0.5,)


@pytest.mark.parametrize(
    "pred_shape, spacing, message",
    [((4, 5), (1.0, 1.0), "shapes differ"), ((4, 4), (1.0,), "one spacing per axis"), ((4,), (1.0,), "2D/3D")],
)
def test_case_metrics_refuses_mismatched_inputs(pred_shape, spacing, message):
    label = np.zeros((4, 4) if message == "shapes differ" else pred_shape, dtype=np.int64)
    with pytest.raises(ValueError, match=message):
        case_metrics(np.zeros(pred_shape, dtype=np.int64), label, spacing, [1])


def test_summary_names_classes_and_states_its_conventions():
    rows = case_metrics(box((8, 8), (1, 1), (4, 4)), box((8, 8), (1, 1), (4, 4)), (1.0, 1.0), [1, 2])
    s = summarise([{**rows[0], "class_name": "anterior"}, rows[1]])
    assert s["classes"]["1"]["class_name"] == "anterior" and s["classes"]["2"]["class_name"] == "2"
    assert s["classes"]["2"]["dice"] == {"mean": None, "median": None, "std": None}  # both_empty only
    assert set(s["conventions"]) == {"hd95", "one_side_empty", "both_empty"}


def test_plain_inference_writes_overlays_with_the_dice_where_a_label_of_the_same_name_exists(tmp_path, capsys):
    from ignite.engine import Engine

    labels = tmp_path / "labelsTr"
    labels.mkdir()
    label = box((16, 16, 6), (3, 3, 1), (11, 11, 5)) + box((16, 16, 6), (11, 3, 1), (14, 11, 5), value=2)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), labels / "case_a.nii.gz")
    pred = label.copy()
    pred[3:5][pred[3:5] == 1] = 0  # class 1 loses 2 of its 8 rows: Dice 2*48/(64+48) = 0.857

    def item(name: str) -> dict[str, MetaTensor]:
        meta = {"filename_or_obj": f"/data/{name}.nii.gz"}
        image = MetaTensor(torch.as_tensor(RNG.random((1, 16, 16, 6))), affine=torch.eye(4), meta=dict(meta))
        return {"image": image, "pred": MetaTensor(torch.as_tensor(pred[None]), affine=torch.eye(4), meta=dict(meta))}

    engine = Engine(lambda engine, batch: batch)
    InferenceOverlays(tmp_path / "out", {1: "anterior", 2: "posterior"}, num_overlays=2, label_dir=labels).attach(
        engine
    )
    engine.run([[item("case_a")], [item("case_b")], [item("case_c")]], max_epochs=1)

    assert sorted(p.name for p in (tmp_path / "out/overlays").iterdir()) == ["case_a.png", "case_b.png"]
    assert capsys.readouterr().out.splitlines() == [
        f"overlay {tmp_path / 'out/overlays/case_a.png'}: Dice anterior 0.857, posterior 1.000",
        f"overlay {tmp_path / 'out/overlays/case_b.png'}",  # no label of that name: prediction only
    ]
    with Image.open(tmp_path / "out/overlays/case_a.png") as im:
        colours = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)[::7]}
    assert len(colours) > 50  # a grey image with two differently coloured classes drawn on it
