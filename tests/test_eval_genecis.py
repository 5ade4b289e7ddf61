"""GeneCIS: the reader (VG boxes, COCO ids), the attribute crop, per-query galleries and recall by hand."""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.eval_layouts import write_image, write_json
from zscir_eval.genecis import TASKS, genecis_metrics, read_genecis, task_metrics, task_rankings
from zscir_eval.images import ImageRef, dilated_box, expand_to_square


def test_reader(genecis_root):
    data = read_genecis(genecis_root)
    assert [t.name for t in data.tasks] == list(TASKS)
    attr, obj = data.tasks[0], data.tasks[2]
    q = attr.queries[0]
    assert q.condition == "color" and q.reference.box == (10, 5, 20, 15)
    assert q.reference.path == genecis_root / "VG_100K_all" / "2300.jpg"
    assert obj.queries[0].target.path == genecis_root / "val2017" / "000000000140.jpg"
    # the same VG image with another box is another gallery item; the same box is the same item
    assert [ref.key for ref in attr.gallery] == [
        "vg/2301@10,5,20,15",
        "vg/2302@10,5,20,15",
        "vg/2303@0,0,30,20",
        "vg/2305@10,5,20,15",
        "vg/2306@10,5,20,15",
        "vg/2307@10,5,20,15",
    ]


def test_dilated_box_by_hand():
    # box [x, y, w, h] = [30, 20, 20, 10] in 60 x 40: left = 30 - 14, top = 20 - 7,
    # right = min(60, 16 + 1.7 * 20), bottom = min(40, 13 + 1.7 * 10)
    assert dilated_box((30, 20, 20, 10), 60, 40) == pytest.approx((16, 13, 50, 30))
    # near the corner the official code grows from the clipped left/top, not from the box
    assert dilated_box((10, 5, 20, 15), 60, 40) == pytest.approx((0, 0, 34, 25.5))


def test_crop_is_padded_to_a_centered_square(genecis_root):
    ref = ImageRef("vg", genecis_root / "VG_100K_all" / "2300.jpg", (30, 20, 20, 10))
    crop = ref.load()
    assert crop.size == (34, 34) and crop.mode == "RGB"
    with Image.open(ref.path) as im:
        expected = im.convert("RGB").crop((16, 13, 50, 30))  # 34 x 17, pasted at y = (34 - 17) // 2
    pixels = np.asarray(crop)
    assert (pixels[:8] == 0).all() and (pixels[25:] == 0).all()
    np.testing.assert_array_equal(pixels[8:25], np.asarray(expected))
    gray = expand_to_square(Image.new("L", (4, 2), 200))
    assert gray.size == (4, 4) and gray.getpixel((0, 0)) == 0 and gray.getpixel((0, 1)) == 200


def test_images_are_decoded_by_the_runtimes_loader(tmp_path):
    # 16-bit grayscale is scaled to 8 bits (a plain convert("RGB") clips it to white), crop or not
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((30, 40), 32896, dtype=np.uint16)).save(path)  # 32896 = 128 * 257
    for ref in (ImageRef("deep", path), ImageRef("deep-crop", path, (10, 5, 20, 15))):
        image = ref.load()
        assert image.mode == "RGB" and set(np.asarray(image).ravel().tolist()) <= {0, 128}
        assert np.asarray(image).max() == 128


def test_per_query_gallery_rankings_and_recall_by_hand(genecis_root):
    task = read_genecis(genecis_root).tasks[0]  # gallery items: 0 vg1, 1 vg2, 2 vg3', 3 vg5, 4 vg6, 5 vg7
    # q0 ranks {0 target, 1, 2}: weights 1, 3, 2 -> 1, 2, 0: target third
    # q1 ranks {3 target, 4, 5, 0}: weights 6, 1, 7, 5 -> 5, 3, 0: target second;
    #   items 1 and 2 score 9 but are not in q1's gallery
    # I holds slots of each query's list (0 = target, i = distractor i), not gallery indices:
    # q0 slots (vg1, vg2, vg3') -> 1, 2, 0; q1 slots (vg5, vg6, vg7, vg1) -> 2, 0, 3
    xq = np.array([[1, 3, 2, 9, 9, 9], [5, 9, 9, 6, 1, 7]], dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    I = task_rankings(task, xq, np.eye(6, dtype=np.float32))
    assert I.tolist() == [[1, 2, 0], [2, 0, 3]]
    assert task_metrics(task, I) == pytest.approx({"R@1": 0.0, "R@2": 50.0, "R@3": 100.0})


def vg_item(image_id, box):
    return {"image_id": image_id, "instance_bbox": list(box), "object_name": "shirt", "attributes": ["red"]}


def write_attribute_task(root, samples):
    for i in range(4):
        write_image(root / "VG_100K_all" / f"{2300 + i}.jpg", i, (60, 40))
    write_json(root / "genecis" / "focus_attribute.json", samples)
    return read_genecis(root, tasks=("focus_attribute",)).tasks[0]


def test_boxes_that_differ_beyond_six_digits_are_two_crops(tmp_path):
    # the same VG image, boxes 10.0000001 and 10.0000002 wide: two crops, two gallery items
    box_a, box_b = (1.5, 2.0, 10.0000001, 8.0), (1.5, 2.0, 10.0000002, 8.0)
    task = write_attribute_task(
        tmp_path,
        [
            {
                "condition": "color",
                "reference": vg_item(2300, (0, 0, 20, 20)),
                "target": vg_item(2301, box_a),
                "gallery": [vg_item(2301, box_b), vg_item(2302, (0, 0, 20, 20))],
            }
        ],
    )
    keys = [ref.key for ref in task.gallery]
    assert keys == ["vg/2301@1.5,2,10.0000001,8", "vg/2301@1.5,2,10.0000002,8", "vg/2302@0,0,20,20"]
    assert [ref.box for ref in task.gallery[:2]] == [box_a, box_b]
    # different features for the two crops: the distractor crop outscores the target crop, a miss at R@1
    xq = np.array([[0.6, 0.8, 0.0]], dtype=np.float32)
    I = task_rankings(task, xq, np.eye(3, dtype=np.float32))
    assert I[0].tolist() == [1, 0, 2] and task_metrics(task, I)["R@1"] == 0.0


def test_a_distractor_that_is_the_target_image_is_not_a_hit(tmp_path):
    # change_object lists its target among its distractors once; here the target crop is distractor 2.
    # Its slot ties with the target's: the official counts only the target's own slot, so a tie at
    # the top is no R@1 hit (by image identity it was one).
    target = vg_item(2301, (5, 5, 10, 10))
    task = write_attribute_task(
        tmp_path,
        [
            {
                "condition": "color",
                "reference": vg_item(2300, (0, 0, 20, 20)),
                "target": target,
                "gallery": [vg_item(2302, (0, 0, 20, 20)), target, vg_item(2303, (0, 0, 20, 20))],
            }
        ],
    )
    assert len(task.gallery) == 3  # the repeated crop is encoded once
    xq = np.array([[0.8, 0.6, 0.0]], dtype=np.float32)  # gallery order: target, 2302, 2303
    I = task_rankings(task, xq, np.eye(3, dtype=np.float32))
    assert I[0].tolist() == [2, 0, 1]  # slot 2 (the target's image) first, then the target's slot
    assert task_metrics(task, I) == pytest.approx({"R@1": 0.0, "R@2": 100.0, "R@3": 100.0})


def test_average_over_tasks():
    per = {t: {"R@1": 10.0 * i, "R@2": 20.0, "R@3": 30.0} for i, t in enumerate(TASKS)}
    m = genecis_metrics(per)
    assert m["change_object/R@1"] == 30.0 and m["avg/R@1"] == pytest.approx(15.0)


def test_single_split(genecis_root):
    with pytest.raises(ValueError, match="one split"):
        read_genecis(genecis_root, "test")
