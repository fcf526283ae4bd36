"""Small image + question tasks for the GPT-4 model (ZOO.md §5), rendered with NumPy, offline.

Each example is a 32 × 32 RGB picture of 1 to 4 shapes (square, circle, triangle) of one colour,
placed in one half of the picture (left, right, top or bottom), with a question about its shape,
colour, count or position and a one-word answer. ``image_tasks(n, seed)`` is deterministic;
``split_tasks`` gives disjoint train and held-out sets; ``majority_baseline`` is the accuracy of
always answering the most common training answer of the question's kind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

SHAPES = ("square", "circle", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (230, 210, 30)}
POSITIONS = ("left", "right", "top", "bottom")
COUNT_WORDS = ("one", "two", "three", "four")
QUESTIONS = {
    "shape": "What shape is shown?",
    "colour": "What colour are the shapes?",
    "count": "How many shapes are there?",
    "position": "Where are the shapes?",
}
IMAGE_SIZE = 32
SHAPE_SIZE = 6  # each shape fits a 6 × 6 cell; four cells fit one half of the picture


@dataclass(frozen=True)
class ImageTask:
    image: np.ndarray  # (32, 32, 3) uint8
    kind: str  # a key of QUESTIONS
    question: str
    answer: str
    shape: str
    colour: str
    count: int
    position: str


def _stamp(canvas: np.ndarray, shape: str, top: int, left: int, rgb: tuple[int, int, int]) -> None:
    y, x = np.mgrid[0:SHAPE_SIZE, 0:SHAPE_SIZE]
    if shape == "square":
        mask = np.ones((SHAPE_SIZE, SHAPE_SIZE), dtype=bool)
    elif shape == "circle":
        centre = (SHAPE_SIZE - 1) / 2
        mask = (y - centre) ** 2 + (x - centre) ** 2 <= (SHAPE_SIZE / 2) ** 2 - 1
    else:  # triangle: apex at the top, base on the bottom row
        mask = np.abs(x - (SHAPE_SIZE - 1) / 2) <= y / 2 + 0.25
    canvas[top : top + SHAPE_SIZE, left : left + SHAPE_SIZE][mask] = rgb


def _cells(position: str) -> list[tuple[int, int]]:
    """Top-left corners of the four cells of one half of the picture (2 × 2 grid, margins of 1: shapes never touch)."""
    half, full = IMAGE_SIZE // 2, IMAGE_SIZE
    rows, cols = {
        "left": ((0, full), (0, half)),
        "right": ((0, full), (half, full)),
        "top": ((0, half), (0, full)),
        "bottom": ((half, full), (0, full)),
    }[position]
    ys = np.linspace(rows[0] + 1, rows[1] - SHAPE_SIZE - 1, 2).astype(int)
    xs = np.linspace(cols[0] + 1, cols[1] - SHAPE_SIZE - 1, 2).astype(int)
    return [(int(y), int(x)) for y in ys for x in xs]


def render(shape: str, colour: str, count: int, position: str, rng: np.random.Generator) -> np.ndarray:
    """``count`` shapes of one kind and colour in distinct cells of the ``position`` half, on white."""
    canvas = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    cells = _cells(position)
    for index in rng.choice(len(cells), size=count, replace=False):
        _stamp(canvas, shape, *cells[index], COLOURS[colour])
    return canvas


def image_tasks(n: int, seed: int = 0) -> list[ImageTask]:
    """``n`` examples, the same for the same seed; question kinds cycle shape/colour/count/position."""
    rng = np.random.default_rng(seed)
    kinds = list(QUESTIONS)
    tasks = []
    for i in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        count = int(rng.integers(1, 5))
        position = POSITIONS[rng.integers(len(POSITIONS))]
        kind = kinds[i % len(kinds)]
        answer = {"shape": shape, "colour": colour, "count": COUNT_WORDS[count - 1], "position": position}[
            kind
        ]
        image = render(shape, colour, count, position, rng)
        tasks.append(ImageTask(image, kind, QUESTIONS[kind], answer, shape, colour, count, position))
    return tasks


def split_tasks(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[ImageTask], list[ImageTask]]:
    """Train and held-out examples drawn from separate seeds (different pictures)."""
    return image_tasks(n_train, seed), image_tasks(n_eval, seed + 1_000_003)


def majority_baseline(train: list[ImageTask], held_out: list[ImageTask]) -> float:
    """Accuracy on ``held_out`` of answering each question kind with its most common training answer (the
    most common answer overall for a kind absent from training). Any tasks with ``kind`` and ``answer``
    do: the recipe applies it to real datasets too."""
    overall = Counter(t.answer for t in train).most_common(1)[0][0]
    majority = {
        kind: Counter(t.answer for t in train if t.kind == kind).most_common(1)[0][0] for kind in {t.kind for t in train}
    }
    return sum(majority.get(t.kind, overall) == t.answer for t in held_out) / len(held_out)
