"""A small generated shapes set (``kdforge data shapes``): real files to try a task on, with no download
(segmentation masks, or YOLO box labels for detection).

Each image has a textured background (a colour gradient, coarse blotches and pixel noise) and 1-4 circles,
squares and triangles of random size, rotation, position and colour, so only the outline tells the classes
apart. Larger shapes are drawn first and later ones may overlap them; the labels follow what is on top.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEGMENTATION_CLASSES = ("background", "circle", "square", "triangle")
_RADIUS = (0.08, 0.32)  # a shape's circumradius as a fraction of the image side: small to large
_CORNERS = {2: 4, 3: 3}  # polygon classes (square, triangle): their number of corners
_MIN_CONTRAST = 120  # summed |RGB difference| between a shape and the background under its centre


def write_segmentation_shapes(
    out: str | Path, image_size: int = 64, train: int = 64, val: int = 16, seed: int = 0
) -> Path:
    """Write ``out/{train,val}/images/NNNN.png``, ``out/{train,val}/masks/NNNN.png`` and ``out/classes.txt``.

    Masks are mode-L PNGs holding the class index (``SEGMENTATION_CLASSES``). Each split has its own seeded
    stream, so changing ``train`` leaves the val images as they were.
    """
    out = Path(out)
    for stream, (split, count) in enumerate((("train", train), ("val", val))):
        rng = np.random.default_rng([seed, stream])
        images, masks = out / split / "images", out / split / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = shapes_scene(rng, image_size, first_class=1 + i % 3)  # every class in any 3 images
            image.save(images / f"{i:04d}.png")
            mask.save(masks / f"{i:04d}.png")
    (out / "classes.txt").write_text("\n".join(SEGMENTATION_CLASSES) + "\n")
    return out


def shapes_scene(rng: np.random.Generator, size: int, first_class: int) -> tuple[Image.Image, Image.Image]:
    """One RGB image and its mode-L class-index mask; `first_class` is among the image's shapes."""
    background = _background(rng, size)  # (S, S, 3) float
    image = Image.fromarray(background.round().astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    paint, label = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    count = int(rng.integers(1, 5))
    classes = rng.permutation([first_class, *rng.integers(1, 4, count - 1)])
    radii = np.sort(rng.uniform(*_RADIUS, count) * size)[::-1]  # large first, so small shapes stay visible
    for cls, radius in zip(classes.tolist(), radii.tolist(), strict=True):
        centre = rng.uniform(0.5 * radius, size - 0.5 * radius, 2)
        outline = _outline(rng, cls, centre, radius)
        local = background[int(centre[1]), int(centre[0])]
        colour = _contrasting_colour(rng, local)
        if outline is None:
            box = [*(centre - radius), *(centre + radius)]
            paint.ellipse(box, fill=colour)
            label.ellipse(box, fill=cls)
        else:
            paint.polygon(outline, fill=colour)
            label.polygon(outline, fill=cls)
    # Soft edges and sensor noise on the image only: the mask keeps the exact outline.
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)
    pixels += rng.normal(0.0, 6.0, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8)), mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient between two random colours along a random direction, plus coarse blotches: (S, S, 3)."""
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xs + np.sin(angle) * ys
    t = (t - t.min()) / max(np.ptp(t), 1e-6)  # (S, S) in [0, 1]
    start, end = rng.uniform(0, 255, (2, 3))
    gradient = start + t[..., None] * (end - start)
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    return (gradient + 0.25 * (blotches - 127.5)).clip(0, 255)


def _outline(rng: np.random.Generator, cls: int, centre: np.ndarray, radius: float) -> list[tuple] | None:
    """A rotated square's or triangle's corners; None for a circle (drawn as an ellipse)."""
    corners = _CORNERS.get(cls)
    if corners is None:
        return None
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(corners) / corners
    return [(centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a)) for a in angles]


def _contrasting_colour(rng: np.random.Generator, local: np.ndarray) -> tuple[int, int, int]:
    """A random colour far enough from the background under the shape to be seen (last draw after 20 tries)."""
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - local).sum() >= _MIN_CONTRAST:
            break
    return tuple(int(c) for c in colour)


DETECTION_CLASSES = ("circle", "square", "triangle")
_MAX_OVERLAP = 0.2  # detection scenes: a new shape's box may cover at most this much of an earlier one's


def write_detection_shapes(
    out: str | Path, image_size: int = 64, train: int = 64, val: int = 16, seed: int = 0
) -> Path:
    """Write ``out/{train,val}/images/NNNN.png``, YOLO labels ``out/{train,val}/labels/NNNN.txt`` (one
    ``class cx cy w h`` line per shape, normalised) and ``out/classes.txt`` (``DETECTION_CLASSES``).

    Shapes barely overlap (so every labelled box shows its object) and range from small to large; each split has
    its own seeded stream, as in `write_segmentation_shapes`.
    """
    out = Path(out)
    for stream, (split, count) in enumerate((("train", train), ("val", val))):
        rng = np.random.default_rng([seed, stream, 1])
        images, labels = out / split / "images", out / split / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, boxes = detection_scene(rng, image_size, first_class=i % 3)
            image.save(images / f"{i:04d}.png")
            lines = [f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for cls, cx, cy, w, h in boxes]
            (labels / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    (out / "classes.txt").write_text("\n".join(DETECTION_CLASSES) + "\n")
    return out


def detection_scene(rng: np.random.Generator, size: int, first_class: int) -> tuple[Image.Image, list[tuple]]:
    """One RGB image and its boxes ``(class, cx, cy, w, h)`` normalised to 0-1; `first_class` is among them."""
    background = _background(rng, size)
    image = Image.fromarray(background.round().astype(np.uint8))
    paint = ImageDraw.Draw(image)
    count = int(rng.integers(1, 5))
    classes = rng.permutation([first_class, *rng.integers(0, 3, count - 1)]).tolist()
    boxes: list[tuple] = []
    for cls in classes:
        placed = _place(rng, cls, size, [b[1:] for b in boxes])
        if placed is None:
            continue
        centre, radius, outline, box = placed
        colour = _contrasting_colour(rng, background[int(centre[1]), int(centre[0])])
        if outline is None:
            paint.ellipse([*(centre - radius), *(centre + radius)], fill=colour)
        else:
            paint.polygon(outline, fill=colour)
        boxes.append((cls, *box))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)
    pixels += rng.normal(0.0, 6.0, pixels.shape)
    labels = [
        (cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size)
        for cls, x0, y0, x1, y1 in boxes
    ]
    return Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8)), labels


def _place(rng: np.random.Generator, cls: int, size: int, taken: list[tuple]) -> tuple | None:
    """A shape's centre, radius, outline and pixel box (x0, y0, x1, y1) clear of `taken`; None after 30 tries."""
    for _ in range(30):
        radius = rng.uniform(*_RADIUS) * size * 0.8
        centre = rng.uniform(radius, size - radius, 2)
        outline = _outline(rng, cls + 1, centre, radius)  # the segmentation numbering: 1 circle, 2 square, 3 triangle
        points = np.array(outline) if outline is not None else np.array([centre - radius, centre + radius])
        box = (*np.clip(points.min(0), 0, size), *np.clip(points.max(0), 0, size))
        if all(_covered(box, other) <= _MAX_OVERLAP for other in taken):
            return centre, radius, outline, tuple(float(v) for v in box)
    return None


def _covered(box: tuple, other: tuple) -> float:
    """The fraction of the smaller box's area that the two boxes share."""
    w = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    h = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
    return w * h / max(smaller, 1e-9)


# `kdforge data shapes --task NAME`: one writer per task.
WRITERS: dict[str, Callable[..., Path]] = {"segment": write_segmentation_shapes, "detect": write_detection_shapes}
