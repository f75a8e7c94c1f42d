import torch

from samsp_monai import masks_to_boxes


def _mask(h: int, w: int, *rects: tuple[int, int, int, int]) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in rects:
        m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def test_single_component_box_is_its_extent():
    boxes, empty = masks_to_boxes(_mask(16, 20, (3, 5, 9, 7)))
    assert boxes.tolist() == [3, 5, 9, 7] and not empty


def test_multiple_components_share_one_box_spanning_all():
    boxes, _ = masks_to_boxes(_mask(16, 20, (1, 2, 3, 4), (12, 10, 15, 11)))
    assert boxes.tolist() == [1, 2, 15, 11]


def test_empty_mask_is_flagged_and_gets_the_whole_image():
    boxes, empty = masks_to_boxes(torch.zeros(16, 20, dtype=torch.bool))
    assert empty and boxes.tolist() == [0, 0, 19, 15]


def test_scale_covers_whole_low_resolution_pixels():
    boxes, _ = masks_to_boxes(_mask(16, 16, (2, 3, 2, 3)), scale=4)
    assert boxes.tolist() == [8, 12, 11, 15]


def test_batch_and_classes_each_get_their_own_box():
    masks = torch.stack(
        [
            torch.stack([_mask(8, 8, (0, 0, 1, 1)), _mask(8, 8)]),
            torch.stack([_mask(8, 8, (4, 4, 7, 5)), _mask(8, 8, (2, 1, 2, 6))]),
        ]
    )
    boxes, empty = masks_to_boxes(masks)
    assert boxes.shape == (2, 2, 4)
    assert boxes.tolist() == [[[0, 0, 1, 1], [0, 0, 7, 7]], [[4, 4, 7, 5], [2, 1, 2, 6]]]
    assert empty.tolist() == [[False, True], [False, False]]


def test_foreground_only_in_the_first_row_and_column_gives_a_box_there():
    boxes, empty = masks_to_boxes(_mask(8, 8, (0, 0, 0, 0)), scale=4)
    assert boxes.tolist() == [0, 0, 3, 3] and not empty
