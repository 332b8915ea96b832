"""The procedural image world behind the embedded mini benchmark.

A scene is a background (one of 8 textures in two colours) with either 1–5 objects (shape,
colour, size, position) or one glyph (a letter or digit drawn with Pillow's built-in font). Scenes
are sampled as latent tensors and rendered in a vectorised way (no per-pixel Python loops), so a
split of thousands of 32×32 images takes well under a second. Everything is a pure function of a
seed. Captions describe shapes, colours, counts, sizes, positions and textures, but never name a
glyph: a CLIP pretrained on them has zero-shot ability on the first kinds of domain and none on
letters and digits (like MNIST or EuroSAT for real CLIP).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SIZE = 32
MAX_OBJECTS = 5

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 185, 55),
    "cyan": (40, 215, 225),
    "blue": (40, 70, 230),
    "purple": (140, 50, 200),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "gray": (140, 140, 140),
}
SHAPES = ["circle", "square", "triangle", "cross", "diamond", "ring", "bar", "moon"]
TEXTURES = [
    "plain",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "dots",
    "diagonal stripes",
    "gradient",
    "speckles",
]
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "center"]
COUNT_WORDS = ["one", "two", "three", "four", "five"]
SIZES = ["small", "large"]
LETTERS = list(string.ascii_uppercase)
DIGITS = list(string.digits)
GLYPHS = LETTERS + DIGITS

_POS_CENTRES = torch.tensor([[9.0, 9.0], [23.0, 9.0], [9.0, 23.0], [23.0, 23.0], [16.0, 16.0]])


@dataclass
class Scenes:
    """Latent description of N scenes (all tensors have leading dimension N)."""

    texture: torch.Tensor  # (N,) index into TEXTURES
    bg: torch.Tensor  # (N, 3) background base colour, 0..255
    bg2: torch.Tensor  # (N, 3) pattern colour
    period: torch.Tensor  # (N,) texture period in pixels
    n_obj: torch.Tensor  # (N,) number of objects 0..5
    shape: torch.Tensor  # (N,) one shape per scene (all objects alike)
    colour: torch.Tensor  # (N,) index into COLOURS
    size: torch.Tensor  # (N,) 0 small, 1 large
    centres: torch.Tensor  # (N, MAX_OBJECTS, 2) object centres (x, y)
    radius: torch.Tensor  # (N, MAX_OBJECTS)
    position: torch.Tensor  # (N,) index into POSITIONS (meaningful when n_obj == 1), else -1
    glyph: torch.Tensor  # (N,) index into GLYPHS, -1 for none
    glyph_xy: torch.Tensor  # (N, 2) top-left offset of the 20×20 glyph tile


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, *shape, generator=g)


def sample_scenes(
    g: torch.Generator,
    n: int,
    *,
    n_obj: torch.Tensor | None = None,
    shape: torch.Tensor | None = None,
    colour: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
    position: torch.Tensor | None = None,
    size: torch.Tensor | None = None,
    glyph: torch.Tensor | None = None,
) -> Scenes:
    """Sample N scenes; any attribute given is fixed, the others are random nuisances."""

    def pick(given: torch.Tensor | None, k: int) -> torch.Tensor:
        return given.long() if given is not None else torch.randint(k, (n,), generator=g)

    glyph_t = glyph.long() if glyph is not None else torch.full((n,), -1)
    has_glyph = glyph_t >= 0
    if n_obj is None:
        n_obj_t = torch.randint(1, MAX_OBJECTS + 1, (n,), generator=g)
    else:
        n_obj_t = n_obj.long()
    n_obj_t = torch.where(has_glyph, torch.zeros_like(n_obj_t), n_obj_t)
    size_t = pick(size, 2)
    # Single objects default to one of the five positions; groups are scattered.
    pos_t = pick(position, len(POSITIONS))
    radius = torch.where(
        size_t[:, None] == 1,
        _uniform(g, n, 7.0, 9.0, MAX_OBJECTS),
        _uniform(g, n, 3.0, 4.5, MAX_OBJECTS),
    )  # (N, K)
    radius = torch.where((n_obj_t[:, None] > 1), _uniform(g, n, 2.8, 3.6, MAX_OBJECTS), radius)
    jitter = _uniform(g, n, -2.5, 2.5, 2)
    single = _POS_CENTRES[pos_t] + jitter  # (N, 2)
    # Groups: objects on a jittered 3×2 grid of slots, in a random slot order.
    slots = torch.tensor(
        [[7.0, 9.0], [16.0, 9.0], [25.0, 9.0], [7.0, 23.0], [16.0, 23.0], [25.0, 23.0]]
    )
    order = torch.argsort(torch.rand(n, len(slots), generator=g), dim=1)[:, :MAX_OBJECTS]
    group = slots[order] + _uniform(g, n, -1.5, 1.5, MAX_OBJECTS, 2)  # (N, K, 2)
    centres = torch.where((n_obj_t == 1)[:, None, None], single[:, None, :].expand_as(group), group)
    if size_t.ndim == 0:
        size_t = size_t.expand(n)
    bg = _uniform(g, n, 10, 90, 3)
    bg2 = bg + _uniform(g, n, 50, 110, 1)
    return Scenes(
        texture=pick(texture, len(TEXTURES)),
        bg=bg,
        bg2=bg2.clamp(0, 170),
        period=_uniform(g, n, 4.0, 7.0),
        n_obj=n_obj_t,
        shape=pick(shape, len(SHAPES)),
        colour=pick(colour, len(COLOURS)),
        size=size_t,
        centres=centres,
        radius=radius,
        position=torch.where(n_obj_t == 1, pos_t, torch.full_like(pos_t, -1)),
        glyph=glyph_t,
        glyph_xy=torch.randint(0, SIZE - 20 + 1, (n, 2), generator=g),
    )


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32),
        torch.arange(SIZE, dtype=torch.float32),
        indexing="ij",
    )
    return xs, ys  # (S, S)


def _texture(
    kind: int, p: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """Pattern weight in [0, 1] of texture ``kind`` for periods p (M, 1, 1) → (M, S, S)."""
    two_pi = 2 * math.pi
    if kind == 0:  # plain
        return torch.zeros(p.shape[0], SIZE, SIZE)
    if kind == 1:  # horizontal stripes
        return (torch.sin(two_pi * ys / p) > 0).float()
    if kind == 2:  # vertical stripes
        return (torch.sin(two_pi * xs / p) > 0).float()
    if kind == 3:  # checkerboard
        return ((torch.sin(two_pi * xs / p) * torch.sin(two_pi * ys / p)) > 0).float()
    if kind == 4:  # dots
        return (
            ((torch.remainder(xs, p) - p / 2) ** 2 + (torch.remainder(ys, p) - p / 2) ** 2)
            <= (p / 4) ** 2
        ).float()
    if kind == 5:  # diagonal stripes
        return (torch.sin(two_pi * (xs + ys) / (p * 1.41)) > 0).float()
    if kind == 6:  # gradient
        return ((xs + ys) / (2 * (SIZE - 1))).expand(p.shape[0], SIZE, SIZE)
    return (torch.rand(p.shape[0], SIZE, SIZE, generator=g) > 0.6).float()  # speckles


def _textures(s: Scenes, g: torch.Generator) -> torch.Tensor:
    """Background pattern weight in [0, 1], (N, S, S); each texture computed for its scenes."""
    xs, ys = _grid()
    out = torch.empty(s.texture.shape[0], SIZE, SIZE)
    for kind in range(len(TEXTURES)):
        idx = (s.texture == kind).nonzero(as_tuple=True)[0]
        if idx.numel():
            out[idx] = _texture(kind, s.period[idx, None, None], xs, ys, g)
    return out


def _shape(kind: int, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Mask of shape ``kind`` with offsets dx, dy (M, K, S, S) and radii r (M, K, 1, 1)."""
    ax, ay = dx.abs(), dy.abs()
    if kind == 0:  # circle
        return dx**2 + dy**2 <= r**2
    if kind == 1:  # square
        return (ax <= 0.85 * r) & (ay <= 0.85 * r)
    if kind == 2:  # triangle
        return (dy <= 0.8 * r) & (dy >= -r) & (ax <= (dy + r) / 2)
    if kind == 3:  # cross
        return ((ax <= r / 3) | (ay <= r / 3)) & (ax <= r) & (ay <= r)
    if kind == 4:  # diamond
        return ax + ay <= r
    d2 = dx**2 + dy**2
    if kind == 5:  # ring
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == 6:  # bar
        return (ax <= r) & (ay <= 0.35 * r)
    return (d2 <= r**2) & ((dx - 0.5 * r) ** 2 + dy**2 > (0.8 * r) ** 2)  # moon


def _shape_masks(s: Scenes) -> torch.Tensor:
    """Union of the scene's object masks, (N, S, S) in {0, 1}; each shape for its scenes."""
    xs, ys = _grid()
    out = torch.zeros(s.shape.shape[0], SIZE, SIZE)
    for kind in range(len(SHAPES)):
        idx = ((s.shape == kind) & (s.n_obj > 0)).nonzero(as_tuple=True)[0]
        if not idx.numel():
            continue
        k = int(s.n_obj[idx].max())  # only as many object slots as these scenes use
        c = s.centres[idx, :k]  # (M, k, 2)
        m = _shape(
            kind,
            xs - c[..., 0, None, None],
            ys - c[..., 1, None, None],
            s.radius[idx, :k, None, None],
        )  # (M, k, S, S)
        active = torch.arange(k)[None, :] < s.n_obj[idx, None]  # (M, k)
        out[idx] = (m & active[..., None, None]).any(dim=1).float()
    return out


@lru_cache(maxsize=1)
def glyph_bank() -> torch.Tensor:
    """(36, 20, 20) anti-aliased masks of A–Z and 0–9 in Pillow's built-in font."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=17)
    except TypeError:  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    tiles = []
    for ch in GLYPHS:
        img = Image.new("L", (20, 20))
        ImageDraw.Draw(img).text((10, 10), ch, font=font, fill=255, anchor="mm")
        tiles.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    return torch.stack(tiles)


def _glyph_masks(s: Scenes) -> torch.Tensor:
    """Glyph coverage in [0, 1], (N, S, S); zero where a scene has no glyph."""
    out = torch.zeros(s.glyph.shape[0], SIZE, SIZE)
    idx = (s.glyph >= 0).nonzero(as_tuple=True)[0]
    if idx.numel():
        padded = torch.zeros(idx.numel(), SIZE + 20, SIZE + 20)
        tiles = glyph_bank()[s.glyph[idx]]  # (M, 20, 20)
        for j in range(idx.numel()):  # paste each 20×20 tile (one slice copy per glyph scene)
            x, y = int(s.glyph_xy[idx[j], 0]), int(s.glyph_xy[idx[j], 1])
            padded[j, y : y + 20, x : x + 20] = tiles[j]
        out[idx] = padded[:, :SIZE, :SIZE]
    return out


def render(s: Scenes, g: torch.Generator) -> torch.Tensor:
    """Render scenes to uint8 images (N, 3, S, S)."""
    n = s.texture.shape[0]
    w = _textures(s, g)[:, None]  # (N, 1, S, S)
    img = s.bg[..., None, None] * (1 - w) + s.bg2[..., None, None] * w  # (N, 3, S, S)
    rgb = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[s.colour]  # (N, 3)
    rgb = rgb * _uniform(g, n, 0.85, 1.0, 1)
    fg = torch.maximum(_shape_masks(s), _glyph_masks(s))[:, None]  # (N, 1, S, S)
    img = img * (1 - fg) + rgb[..., None, None] * fg
    img = img + torch.randn(n, 3, SIZE, SIZE, generator=g) * 8.0
    return img.clamp(0, 255).round().to(torch.uint8)


def render_chunked(s: Scenes, g: torch.Generator, chunk: int = 512) -> torch.Tensor:
    """``render`` in chunks to bound memory (the object masks are (N, 5, S, S))."""
    n = s.texture.shape[0]
    parts = []
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        part = Scenes(**{k: getattr(s, k)[sl] for k in Scenes.__dataclass_fields__})
        parts.append(render(part, g))
    return torch.cat(parts) if parts else torch.empty(0, 3, SIZE, SIZE, dtype=torch.uint8)


def caption(s: Scenes, i: int, g: torch.Generator) -> str:
    """A caption for scene i: shapes, colours, counts, size, position, texture; never the glyph."""
    tex = TEXTURES[int(s.texture[i])]
    background = "a plain background" if tex == "plain" else f"a background of {tex}"
    colour = list(COLOURS)[int(s.colour[i])]
    variant = int(torch.randint(3, (1,), generator=g))
    if int(s.glyph[i]) >= 0:
        return [
            f"a {colour} symbol on {background}.",
            f"a {colour} character.",
            f"a {colour} sign on {background}.",
        ][variant]
    shape = SHAPES[int(s.shape[i])]
    k = int(s.n_obj[i])
    if k == 1:
        size = SIZES[int(s.size[i])]
        pos = POSITIONS[int(s.position[i])]
        return [
            f"a {size} {colour} {shape} in the {pos} on {background}.",
            f"a {colour} {shape} in the {pos}.",
            f"a photo of a {colour} {shape} on {background}.",
        ][variant]
    return [
        f"{COUNT_WORDS[k - 1]} {colour} {shape}s on {background}.",
        f"{COUNT_WORDS[k - 1]} {shape}s.",
        f"a picture of {COUNT_WORDS[k - 1]} {colour} {shape}s.",
    ][variant]


def sample_pretraining_batch(
    seed: int, n: int, glyph_fraction: float = 0.15
) -> tuple[torch.Tensor, list[str]]:
    """N random scenes (a share of them glyphs) with captions, a pure function of ``seed``."""
    g = torch.Generator().manual_seed(seed)
    glyph = torch.where(
        torch.rand(n, generator=g) < glyph_fraction,
        torch.randint(len(GLYPHS), (n,), generator=g),
        torch.full((n,), -1),
    )
    n_obj = torch.where(
        torch.rand(n, generator=g) < 0.5,
        torch.ones(n, dtype=torch.long),
        torch.randint(1, MAX_OBJECTS + 1, (n,), generator=g),
    )
    scenes = sample_scenes(g, n, n_obj=n_obj, glyph=glyph)
    images = render_chunked(scenes, g)
    return images, [caption(scenes, i, g) for i in range(n)]
