"""The embedded image + question tasks (ZOO.md §5) for the GPT-4 model."""

from __future__ import annotations

import numpy as np

from hf_paper_models.data.images import (
    COLOURS,
    COUNT_WORDS,
    IMAGE_SIZE,
    image_tasks,
    majority_baseline,
    split_tasks,
)


def test_tasks_are_deterministic_and_seeds_differ():
    a, b, c = image_tasks(20, seed=3), image_tasks(20, seed=3), image_tasks(20, seed=4)
    assert all(np.array_equal(x.image, y.image) and x.answer == y.answer for x, y in zip(a, b))
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_answers_match_the_rendered_pictures():
    for task in image_tasks(80, seed=0):
        assert task.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and task.image.dtype == np.uint8
        painted = (task.image != 255).any(-1)
        # Colour: every painted pixel has the named colour.
        assert (task.image[painted] == COLOURS[task.colour]).all()
        # Position: all paint lies in the named half.
        ys, xs = np.nonzero(painted)
        half = IMAGE_SIZE // 2
        inside = {"left": xs < half, "right": xs >= half, "top": ys < half, "bottom": ys >= half}[
            task.position
        ]
        assert inside.all()
        # Count: connected blobs (4-neighbourhood flood fill), independent of the renderer.
        seen, blobs = np.zeros_like(painted), 0
        for y, x in zip(ys, xs):
            if seen[y, x]:
                continue
            blobs += 1
            stack = [(y, x)]
            while stack:
                cy, cx = stack.pop()
                if 0 <= cy < IMAGE_SIZE and 0 <= cx < IMAGE_SIZE and painted[cy, cx] and not seen[cy, cx]:
                    seen[cy, cx] = True
                    stack += [(cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)]
        assert blobs == task.count
        # Shape: a square fills its bounding box, a circle about π/4 of it, a triangle about half.
        fill = painted.sum() / task.count / 36
        expected = {"square": 1.0, "circle": 0.6, "triangle": 0.55}[task.shape]
        assert abs(fill - expected) < 0.12, (task.shape, fill)
        answer = {
            "shape": task.shape,
            "colour": task.colour,
            "count": COUNT_WORDS[task.count - 1],
            "position": task.position,
        }[task.kind]
        assert task.answer == answer


def test_split_and_majority_baseline():
    train, held_out = split_tasks(200, 100, seed=0)
    assert not any(np.array_equal(a.image, b.image) for a in train[:20] for b in held_out[:20])
    accuracy = majority_baseline(train, held_out)
    assert 0.1 < accuracy < 0.5  # 3 to 4 answers per question kind
