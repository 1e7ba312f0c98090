"""Deterministic synthetic scenes for the tiny offline dataset.

A scene is a flat background colour with one to three simple objects (a coloured circle, square or
triangle) placed in the cells of a 3x3 grid, and optionally a short string of capital letters and
digits written large in one free cell. Everything is drawn from a seeded ``random.Random`` so the same
seed always gives the same scenes, pictures, captions and questions.

Scenes are square (336x336, ``SCENE_SIZE``) unless a size is given: with one layout, each grid cell
falls on the same vision tokens in every picture, which a tiny model trained for minutes needs (with
mixed aspect ratios it learnt only the background colour). ``MIXED_SIZES`` are wide, tall and
in-between sizes for which LLaVA-NeXT AnyRes with the default grid pinpoints gives 3, 4 or 5 crops.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import string
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 180),
    "orange": (250, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Grid cell names in raster order; the value is (row, column).
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
# (width, height) of every scene the tiny dataset and its evaluation split draw.
SCENE_SIZE: tuple[int, int] = (336, 336)
# (width, height): square, wide, tall and in-between sizes (AnyRes gives 3, 4 or 5 crops).
MIXED_SIZES: tuple[tuple[int, int], ...] = (
    (336, 336),
    (672, 336),
    (336, 672),
    (600, 600),
    (1008, 336),
    (300, 900),
    (448, 336),
    (336, 448),
    (512, 384),
    (800, 400),
    (900, 300),
    (384, 512),
)
TEXT_ALPHABET = string.ascii_uppercase + string.digits
# Fraction of the smaller cell side covered by an object.
OBJECT_SCALE = 0.7


@dataclass(frozen=True)
class SceneObject:
    """One coloured shape sitting in one grid cell."""

    color: str
    shape: str
    position: str


@dataclass(frozen=True)
class Scene:
    """Everything needed to render and describe one synthetic picture."""

    width: int
    height: int
    background: str
    objects: tuple[SceneObject, ...]
    text: str | None = None
    text_position: str | None = None
    text_color: str = "black"

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def object_at(self, position: str) -> SceneObject | None:
        """The object in the named cell, or None when the cell holds no object."""
        return next((obj for obj in self.objects if obj.position == position), None)


def scene_to_dict(scene: Scene) -> dict:
    """The scene as plain JSON values (``scene_from_dict`` reads it back)."""
    return dataclasses.asdict(scene)


def scene_from_dict(values: dict) -> Scene:
    """The scene ``scene_to_dict`` wrote."""
    objects = tuple(SceneObject(**obj) for obj in values["objects"])
    return Scene(**{**values, "objects": objects})


def _text_color_for(background: str) -> str:
    """Black or white, whichever stands out more from the background."""
    r, g, b = COLORS[background]
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return "black" if luminance > 110 else "white"


def random_scene(rng: random.Random, size: tuple[int, int] = SCENE_SIZE) -> Scene:
    """Draw a random scene of ``size`` (width, height)."""
    width, height = size
    background = rng.choice(list(COLORS))
    object_colors = [name for name in COLORS if name != background]
    cells = rng.sample(list(POSITIONS), k=4)
    num_objects = rng.randint(1, 3)
    objects = tuple(
        SceneObject(color=rng.choice(object_colors), shape=rng.choice(SHAPES), position=cell)
        for cell in cells[:num_objects]
    )
    text = text_position = None
    if rng.random() < 0.5:
        text = "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(2, 4)))
        text_position = cells[num_objects]
    return Scene(
        width=width,
        height=height,
        background=background,
        objects=objects,
        text=text,
        text_position=text_position,
        text_color=_text_color_for(background),
    )


def cell_box(scene: Scene, position: str) -> tuple[float, float, float, float]:
    """The (left, top, right, bottom) pixel box of a named grid cell."""
    row, col = POSITIONS[position]
    cell_w, cell_h = scene.width / 3, scene.height / 3
    return (col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h)


def cell_center(scene: Scene, position: str) -> tuple[int, int]:
    """Integer pixel at the centre of a named cell (always inside the object drawn there)."""
    left, top, right, bottom = cell_box(scene, position)
    return (int((left + right) / 2), int((top + bottom) / 2))


def object_radius(scene: Scene) -> float:
    """Half the extent of every object: a circle's radius, a triangle's half base and half height.

    A square's half side is 0.85 times this. Objects stay well inside their cell.
    """
    return OBJECT_SCALE * min(scene.width, scene.height) / 6


def _draw_object(draw: ImageDraw.ImageDraw, scene: Scene, obj: SceneObject) -> None:
    cx, cy = cell_center(scene, obj.position)
    radius = object_radius(scene)
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif obj.shape == "square":
        half = 0.85 * radius
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fitted_font(text: str, box_w: float, box_h: float) -> ImageFont.FreeTypeFont:
    """The largest default font (in steps of 2 px) whose rendering of ``text`` fits the box."""
    size = max(8, int(box_h * 0.6))
    while size > 8:
        font = _font(size)
        left, top, right, bottom = font.getbbox(text)
        if right - left <= 0.9 * box_w and bottom - top <= 0.8 * box_h:
            return font
        size -= 2
    return _font(8)


def render_scene(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image of size (scene.width, scene.height)."""
    image = Image.new("RGB", scene.size, COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, scene, obj)
    if scene.text and scene.text_position:
        left, top, right, bottom = cell_box(scene, scene.text_position)
        font = _fitted_font(scene.text, right - left, bottom - top)
        center = ((left + right) / 2, (top + bottom) / 2)
        draw.text(center, scene.text, fill=COLORS[scene.text_color], font=font, anchor="mm")
    return image


def position_phrase(position: str) -> str:
    """'at the top left', 'in the center', 'on the left', ..."""
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_scene(scene: Scene) -> str:
    """A one or two sentence caption naming every object, the background and the text."""
    parts = [f"{_article(o.color)} {o.color} {o.shape} {position_phrase(o.position)}" for o in scene.objects]
    caption = _join(parts)
    caption = (
        caption[0].upper() + caption[1:] + f", on {_article(scene.background)} {scene.background} background."
    )
    if scene.text and scene.text_position:
        caption += f' The text "{scene.text}" is written {position_phrase(scene.text_position)}.'
    return caption


def background_question(scene: Scene) -> tuple[str, str]:
    return "What color is the background?", scene.background.capitalize() + "."


def object_color_question(obj: SceneObject) -> tuple[str, str]:
    return f"What color is the object {position_phrase(obj.position)}?", obj.color.capitalize() + "."


def shape_question(obj: SceneObject) -> tuple[str, str]:
    return f"What shape is {position_phrase(obj.position)}?", f"{_article(obj.shape).capitalize()} {obj.shape}."


def count_question(scene: Scene) -> tuple[str, str]:
    return "How many shapes are there in the image?", f"{len(scene.objects)}."


def position_question(obj: SceneObject) -> tuple[str, str]:
    where = position_phrase(obj.position)
    return f"Where is the {obj.color} {obj.shape}?", where[0].upper() + where[1:] + "."


def text_present_question(scene: Scene) -> tuple[str, str]:
    return "Is there any text in the image?", "Yes." if scene.text and scene.text_position else "No."


def text_reading_question(scene: Scene) -> tuple[str, str]:
    return "What text is written in the image?", scene.text or ""


def _unique_kinds(scene: Scene) -> list[SceneObject]:
    """The objects no other object shares colour and shape with (so "the red circle" names one)."""
    kinds = [(o.color, o.shape) for o in scene.objects]
    return [o for o in scene.objects if kinds.count((o.color, o.shape)) == 1]


def _color_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    pairs = [object_color_question(rng.choice(scene.objects))]
    shapes = [o.shape for o in scene.objects]
    unique = [o for o in scene.objects if shapes.count(o.shape) == 1]
    if unique:
        obj = rng.choice(unique)
        pairs.append((f"What color is the {obj.shape}?", obj.color.capitalize() + "."))
    pairs.append(background_question(scene))
    return pairs


def _shape_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    pairs = [shape_question(rng.choice(scene.objects))]
    if rng.random() < 0.5:
        asked = rng.choice(scene.objects)
        color, shape = asked.color, asked.shape
    else:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    present = any(o.color == color and o.shape == shape for o in scene.objects)
    pairs.append((f"Is there {_article(color)} {color} {shape} in the image?", "Yes." if present else "No."))
    return pairs


def _position_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    pairs = []
    unique = _unique_kinds(scene)
    if unique:
        pairs.append(position_question(rng.choice(unique)))
    cell = rng.choice(list(POSITIONS))
    occupied = scene.object_at(cell) is not None
    pairs.append((f"Is there a shape {position_phrase(cell)}?", "Yes." if occupied else "No."))
    return pairs


def _count_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    shape = rng.choice(SHAPES)
    num_shape = sum(o.shape == shape for o in scene.objects)
    return [count_question(scene), (f"How many {shape}s are there?", f"{num_shape}.")]


def _text_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    if not scene.text or not scene.text_position:
        return [text_present_question(scene)]
    where = position_phrase(scene.text_position)
    return [
        text_reading_question(scene),
        ("Where is the text written?", where[0].upper() + where[1:] + "."),
        text_present_question(scene),
    ]


EVAL_CATEGORIES = ("background", "shape", "object_color", "count", "position", "text_present", "text_reading")


def category_questions(scene: Scene, rng: random.Random) -> dict[str, tuple[str, str]]:
    """One (question, answer) per evaluation category that the scene can answer, phrased exactly as
    the training questions are: text reading only with text, position only for an object whose
    colour and shape no other object shares."""
    unique = _unique_kinds(scene)
    questions = {
        "background": background_question(scene),
        "shape": shape_question(rng.choice(scene.objects)),
        "object_color": object_color_question(rng.choice(scene.objects)),
        "count": count_question(scene),
        "text_present": text_present_question(scene),
    }
    if unique:
        questions["position"] = position_question(rng.choice(unique))
    if scene.text and scene.text_position:
        questions["text_reading"] = text_reading_question(scene)
    return questions


QA_GENERATORS = (_color_questions, _shape_questions, _position_questions, _count_questions, _text_questions)


def scene_qa_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Short question/answer pairs about colours, shapes, positions, counts and text, shuffled.

    Every answer is determined by the rendered image. Questions are distinct within the list.
    """
    pairs: list[tuple[str, str]] = []
    for generator in QA_GENERATORS:
        for pair in generator(scene, rng):
            if pair[0] not in {question for question, _ in pairs}:
                pairs.append(pair)
    rng.shuffle(pairs)
    return pairs
