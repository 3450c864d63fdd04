"""Draw a case (cases.Case) as a grey chest radiograph, vectorised with numpy grids.

Model: an attenuation map A (bright = dense). Soft tissue fills the body; the lungs subtract `0.34 * air`, where
`air` is the lung's air fraction; every opacity finding (fluid, consolidation, haze) lowers that fraction through
one opacity map O in [0, 1], so findings look like real ones (white where the lung should be black), and a
pneumothorax raises it (free air, no markings). Bones add on top; metal (devices, foreign objects) is composited
last at near-white. Textures and noise are drawn before any finding, so a finding changes only its own pixels.

Coordinates: normalised patient coordinates (X right on the image, Y down, 1.0 = shorter image side), mapped to
pixels through the patient's shift, scale and tilt. Boxes are [x1, y1, x2, y2] in pixels of the written image
(x2, y2 exclusive).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from cgns.synthetic.cases import Case, Finding

EDGE = 0.01  # width of the soft border of anatomical masks, normalised units


@dataclass
class Rendered:
    """image uint8 [H, W]; boxes: per finding index, its region box (or None); ptx_mask bool [H, W] or None;
    objects: foreign-object annotations as (type, [coords in pixels]) with type 0 rect, 1 ellipse, 2 polygon."""
    image: np.ndarray
    boxes: dict[int, list[int] | None] = field(default_factory=dict)
    ptx_mask: np.ndarray | None = None
    objects: list[tuple[int, list[int]]] = field(default_factory=list)


def _soft(d: np.ndarray, edge: float = EDGE) -> np.ndarray:
    """Signed distance (positive inside) -> soft membership in [0, 1]."""
    out = d * np.float32(1.0 / edge)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _bbox(mask: np.ndarray) -> list[int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _union(boxes: list[list[int] | None]) -> list[int] | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    arr = np.array(boxes)
    return [int(arr[:, 0].min()), int(arr[:, 1].min()), int(arr[:, 2].max()), int(arr[:, 3].max())]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise, std ~1, [h, w] float32 (bicubic upsampling of a cells x cells grid)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC))


class _Frame:
    """The pixel grid in patient coordinates, and the way back to pixels."""

    def __init__(self, case: Case, h: int, w: int):
        an = case.anatomy
        self.h, self.w, self.s = h, w, min(h, w)
        self.an = an
        cols = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / self.s - an.shift_x
        rows = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / self.s - an.shift_y
        c, s = np.float32(np.cos(an.tilt) / an.scale), np.float32(np.sin(an.tilt) / an.scale)
        # rotate and scale the pixel grid: [1, W] and [H, 1] broadcast to [H, W]
        self.X = cols[None, :] * c + rows[:, None] * s
        self.Y = rows[:, None] * c - cols[None, :] * s

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        an = self.an
        c, s = np.cos(an.tilt), np.sin(an.tilt)
        xs, ys = np.asarray(x) * an.scale, np.asarray(y) * an.scale
        xi, yi = xs * c - ys * s, xs * s + ys * c
        return (xi + an.shift_x) * self.s + self.w / 2, (yi + an.shift_y) * self.s + self.h / 2


class _Lung:
    """One lung field: apex at `top`, widest at its base, cut below by the hemidiaphragm dome."""

    def __init__(self, frame: _Frame, side: str, dome_base: float):
        an = frame.an
        self.side, self.sgn = side, (-1.0 if side == "right" else 1.0)
        self.top = -0.03 - an.lung_h
        self.dome_base = dome_base
        self.cx, self.w = self.sgn * an.lung_gap, an.lung_w
        X, Y = frame.X, frame.Y
        self.t = np.clip((Y - self.top) / (dome_base - self.top), 0.0, 1.2)  # 0 apex .. 1 base
        self.xc = self.cx + self.sgn * 0.02 * self.t
        self.half_width = self.w * np.cbrt(np.clip(self.t, 0, 1)) * (1.0 + 0.1 * self.t)
        self.dome = dome_base - 0.045 * (1 - np.clip(((X - self.cx) / (self.w * 1.2)) ** 2, 0, 1))
        self.lateral = self.sgn * (X - self.xc)  # >0 towards the chest wall
        d_side = self.half_width - np.abs(X - self.xc)
        self.soft = _soft(d_side) * _soft(self.dome - Y) * _soft(Y - self.top)
        self.hard = self.soft > 0.5

    def point(self, t: float, across: float) -> tuple[float, float]:
        """Patient coordinates of the point at height t (0 apex, 1 base) and `across` half-widths laterally."""
        y = self.top + t * (self.dome_base - self.top)
        half = self.w * t ** 0.33 * (1 + 0.1 * t)
        return self.cx + self.sgn * (0.02 * t + across * half), y


ZONE_T = {"upper": 0.28, "middle": 0.55, "lower": 0.8}


def _blobs(frame: _Frame, rng: np.random.Generator, centres: list[tuple[float, float]], sigma: float) -> np.ndarray:
    out = np.zeros_like(frame.X)
    for x0, y0 in centres:
        sx, sy = sigma * rng.uniform(0.8, 1.3), sigma * rng.uniform(0.8, 1.3)
        out = np.maximum(out, np.exp(-(((frame.X - x0) / sx) ** 2 + ((frame.Y - y0) / sy) ** 2) / 2))
    return out


def _effusion(frame: _Frame, lungs: dict[str, _Lung], f: Finding, rng: np.random.Generator):
    """Fluid filling the base up to a meniscus that climbs laterally; bilateral fills both sides."""
    opacity, region = np.zeros_like(frame.X), []
    for side in (("right", "left") if f.side == "bilateral" else (f.side,)):
        lung = lungs[side]
        level = lung.dome_base - (0.03 + 0.17 * f.severity) - 0.05 * np.clip(lung.lateral / lung.w, 0, 1)
        fill = _soft(frame.Y - level, 0.015) * lung.soft
        opacity = np.maximum(opacity, 0.95 * fill)
        region.append(_bbox(fill > 0.5))
    return opacity, _union(region)


def _consolidation(frame: _Frame, lungs: dict[str, _Lung], f: Finding, rng: np.random.Generator):
    """Dense confluent blobs in a lobe; an upper-lobe opacity stops sharply at the fissure."""
    lung = lungs[f.side]
    x0, y0 = lung.point(ZONE_T[f.zone] + rng.uniform(-0.06, 0.06), rng.uniform(-0.2, 0.45))
    sigma = 0.03 + 0.035 * f.severity
    centres = [(x0 + rng.normal(0, sigma * 0.6), y0 + rng.normal(0, sigma * 0.6)) for _ in range(4)]
    shape = np.clip(1.6 * _blobs(frame, rng, centres, sigma), 0, 1)
    if f.zone == "upper":
        shape = shape * _soft(y0 + 0.06 - frame.Y, 0.01)
    shape = shape * lung.soft
    # the region is where a blob of density 0.5 + 0.45 severity would exceed 0.25 (generator version 1 drew it
    # that dense); version 2 draws the same shape at half that density, closer to a real airspace opacity
    return shape * (0.25 + 0.225 * f.severity), _bbox(shape * (0.5 + 0.45 * f.severity) > 0.25)


def _nodule(frame: _Frame, lungs: dict[str, _Lung], f: Finding, rng: np.random.Generator):
    lung = lungs[f.side]
    x0, y0 = lung.point(ZONE_T[f.zone] + rng.uniform(-0.06, 0.06), rng.uniform(-0.3, 0.5))
    r = 0.016 + 0.014 * f.severity
    disc = _soft(r - np.sqrt((frame.X - x0) ** 2 + (frame.Y - y0) ** 2), 0.006)
    return disc, _bbox(disc > 0.5)


def _atelectasis(frame: _Frame, lungs: dict[str, _Lung], f: Finding, rng: np.random.Generator):
    """A plate-like band at the base (the lifted hemidiaphragm is drawn by _lift_domes)."""
    lung = lungs[f.side]
    x0, y0 = lung.point(0.78, 0.1)
    theta = rng.uniform(-0.3, 0.3)
    along = (frame.X - x0) * np.cos(theta) + (frame.Y - y0) * np.sin(theta)
    normal = -(frame.X - x0) * np.sin(theta) + (frame.Y - y0) * np.cos(theta)
    half_t = 0.01 + 0.014 * f.severity
    band = _soft(half_t - np.abs(normal), 0.006) * _soft(lung.w * 0.85 - np.abs(along), 0.02) * lung.soft
    return 0.95 * band, _bbox(band > 0.5)


def _edema(frame: _Frame, lungs: dict[str, _Lung], f: Finding, rng: np.random.Generator):
    """Bilateral perihilar haze plus faint horizontal interstitial lines at the bases."""
    haze = np.zeros_like(frame.X)
    for lung in lungs.values():
        hx = lung.cx - lung.sgn * 0.25 * lung.w
        g = np.exp(-(((frame.X - hx) / 0.09) ** 2 + (frame.Y / 0.16) ** 2) / 2)
        haze = np.maximum(haze, g * lung.soft)
    streaks = 0.5 + 0.5 * np.cos(frame.Y * (2 * np.pi / 0.025))
    both = lungs["right"].soft + lungs["left"].soft
    haze = haze * (0.45 + 0.45 * f.severity) + 0.15 * f.severity * streaks * (frame.Y > 0.05) * both
    haze = np.clip(haze, 0, 1)
    return haze, _bbox(haze > 0.2)


def _covid(frame: _Frame, lungs: dict[str, _Lung], f: Finding, rng: np.random.Generator):
    """Bilateral, peripheral, mid-to-lower zone ground-glass blobs."""
    opacity, region = np.zeros_like(frame.X), []
    for side in ("right", "left"):
        lung = lungs[side]
        centres = [lung.point(rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.85)) for _ in range(4)]
        blob = np.clip(1.4 * _blobs(frame, rng, centres, 0.035 + 0.025 * f.severity), 0, 1) * lung.soft
        blob = blob * (0.55 + 0.35 * f.severity)
        opacity = np.maximum(opacity, blob)
        region.append(_bbox(blob > 0.2))
    return opacity, _union(region)


DRAW_OPACITY = {"effusion": _effusion, "consolidation": _consolidation, "nodule": _nodule,
                "atelectasis": _atelectasis, "edema": _edema, "covid": _covid}


def _pneumothorax(lung: _Lung, frame: _Frame, f: Finding) -> tuple[np.ndarray, np.ndarray]:
    """(free-air region bool [H, W], visceral pleural line bool [H, W]): a rim between the chest wall and the
    collapsed lung, widest at the apex; f.extra['parts'] = 2 splits it in two (a loculated pneumothorax)."""
    gap = (0.03 + 0.07 * f.severity) * (1 - 0.8 * np.clip(lung.t, 0, 1))
    cap = lung.top + 0.03 + 0.09 * f.severity
    d_collapsed = np.minimum(lung.half_width - gap - lung.lateral, frame.Y - cap)
    region = lung.hard & (d_collapsed < 0)
    if f.extra.get("parts", 1) > 1:
        y_cut = lung.top + 0.45 * (lung.dome_base - lung.top)
        region &= np.abs(frame.Y - y_cut) > 0.04
    return region, lung.hard & ~region & (np.abs(d_collapsed) < 0.006)


def _lung_opacities(frame: _Frame, lungs: dict[str, _Lung], case: Case, rng: np.random.Generator,
                    boxes: dict[int, list[int] | None]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(opacity O [H, W], pneumothorax mask bool [H, W] or None, nodule density [H, W]).

    O in [0, 1] is the fraction of lung air replaced by fluid or tissue; O = -1 marks free pleural air
    (a pneumothorax: darker than lung, no markings), set last so no other finding paints over it."""
    opacity = np.zeros_like(frame.X)
    nodules = np.zeros_like(frame.X)
    ptx_mask = None
    for i, f in enumerate(case.findings):
        if f.kind in DRAW_OPACITY:
            drawn, boxes[i] = DRAW_OPACITY[f.kind](frame, lungs, f, rng)
            opacity = np.maximum(opacity, drawn)
            if f.kind == "nodule":
                nodules = np.maximum(nodules, drawn)
    for i, f in enumerate(case.findings):
        if f.kind == "pneumothorax":
            lung = lungs[f.side]
            region, pleural_line = _pneumothorax(lung, frame, f)
            # the collapsed lung is a little denser; its edge is a thin, faint white line
            opacity = np.where(lung.hard & ~region, np.maximum(opacity, 0.06 + 0.06 * f.severity), opacity)
            opacity = np.where(pleural_line, np.maximum(opacity, 0.5), opacity)
            opacity = np.where(region, -1.0, opacity)
            ptx_mask = region if ptx_mask is None else (ptx_mask | region)
            boxes[i] = _bbox(region)
    return opacity, ptx_mask, nodules


def _metal_layer(frame: _Frame, case: Case, rng: np.random.Generator,
                 boxes: dict[int, list[int] | None], objects: list) -> np.ndarray:
    """Devices and foreign objects drawn with PIL at pixel coordinates -> float [H, W] in [0, 1]."""
    layer = Image.new("L", (frame.w, frame.h), 0)
    unit = frame.s * frame.an.scale  # pixels per normalised unit

    def px(points):
        xs, ys = frame.to_pixels(np.array([p[0] for p in points]), np.array([p[1] for p in points]))
        return [(float(x), float(y)) for x, y in zip(xs, ys)]

    for i, f in enumerate(case.findings):
        if f.kind == "device":  # drawn on its own layer so that its box is its own
            kind = f.extra["device"]
            width = max(1, int(round(0.01 * unit)))
            device = Image.new("L", (frame.w, frame.h), 0)
            draw = ImageDraw.Draw(device)
            if kind == "ett":
                pts = px([(0.01, -0.6), (0.012, -0.35), (0.01, -0.16)])
                draw.line(pts, fill=235, width=width)
            elif kind == "line":
                pts = px([(-0.3, -0.36), (-0.15, -0.3), (-0.05, -0.22), (-0.03, -0.08)])
                draw.line(pts, fill=225, width=width)
            elif kind == "pacemaker":
                box = px([(0.2, -0.33), (0.3, -0.27)])
                draw.rectangle([box[0], box[1]], fill=245)
                draw.line(px([(0.25, -0.3), (0.1, -0.2), (0.02, -0.02), (0.0, 0.1)]), fill=230, width=width)
            elif kind == "chest_tube":
                sgn = -1.0 if f.extra.get("side") == "right" else 1.0
                draw.line(px([(sgn * 0.38, 0.15), (sgn * 0.33, -0.05), (sgn * 0.22, -0.25)]), fill=230,
                          width=max(1, int(round(0.015 * unit))))
            boxes[i] = _bbox(np.asarray(device) > 0)
            layer = ImageChops.lighter(layer, device)
        elif f.kind == "foreign_object":
            draw = ImageDraw.Draw(layer)
            shape = f.extra["shape"]
            cx = rng.uniform(0.15, 0.85) * frame.w
            cy = rng.uniform(0.12, 0.88) * frame.h
            size = rng.uniform(0.03, 0.09) * frame.s
            value = int(rng.integers(200, 256))
            if shape == 0:  # rectangle: a snap, a battery, a lead marker (sometimes with a darker core)
                x1, y1 = cx - size * rng.uniform(0.5, 1.5), cy - size * rng.uniform(0.5, 1.5)
                x2, y2 = cx + size * rng.uniform(0.5, 1.5), cy + size * rng.uniform(0.5, 1.5)
                coords = [int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2))]
                draw.rectangle(coords, fill=value)
                if rng.random() < 0.5 and min(x2 - x1, y2 - y1) > 6:
                    inset = min(x2 - x1, y2 - y1) / 4
                    draw.rectangle([x1 + inset, y1 + inset, x2 - inset, y2 - inset], fill=value - 40)
            elif shape == 1:  # ellipse: a coin, or a button with its holes
                rx, ry = size * rng.uniform(0.5, 1.2), size * rng.uniform(0.5, 1.2)
                coords = [int(cx - rx), int(cy - ry), int(np.ceil(cx + rx)), int(np.ceil(cy + ry))]
                draw.ellipse(coords, fill=value)
                if rng.random() < 0.5 and min(rx, ry) > 4:
                    hole = max(1.0, min(rx, ry) / 5)
                    for hx, hy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
                        px_, py_ = cx + hx * min(rx, ry) / 3, cy + hy * min(rx, ry) / 3
                        draw.ellipse([px_ - hole, py_ - hole, px_ + hole, py_ + hole], fill=0)
            elif rng.random() < 0.5:  # polygon: an irregular clip or jewel
                n = int(rng.integers(5, 9))
                angles = np.sort(rng.uniform(0, 2 * np.pi, n))
                radii = size * rng.uniform(0.5, 1.6, n)
                pts = [(int(cx + r * np.cos(a)), int(cy + r * np.sin(a))) for a, r in zip(angles, radii)]
                draw.polygon(pts, fill=value)
                coords = [v for p in pts for v in p]
            else:  # polygon: a wire or chain, outlined by offsetting a random polyline to both sides
                steps = int(rng.integers(3, 6))
                heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.5, steps))
                line = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * size * 0.8, 0)
                line = line - line.mean(0) + (cx, cy)
                direction = np.gradient(line, axis=0)
                normal = np.stack([-direction[:, 1], direction[:, 0]], 1)
                normal = normal / np.linalg.norm(normal, axis=1, keepdims=True) * max(1.0, 0.012 * frame.s)
                outline = np.concatenate([line + normal, (line - normal)[::-1]])
                pts = [(int(round(x)), int(round(y))) for x, y in outline]
                draw.polygon(pts, fill=value)
                coords = [v for p in pts for v in p]
            coords = [int(np.clip(v, 0, (frame.w if k % 2 == 0 else frame.h) - 1)) for k, v in enumerate(coords)]
            objects.append((shape, coords))
            xs, ys = coords[0::2], coords[1::2]
            boxes[i] = [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
    return np.asarray(layer, dtype=np.float32) / 255.0


def _lift_domes(case: Case) -> tuple[float, float]:
    """Heights of the right and left hemidiaphragm domes; atelectasis (volume loss) lifts its side."""
    an = case.anatomy
    dome_right, dome_left = an.dome_right, an.dome_right + 0.025
    for f in case.findings:
        if f.kind == "atelectasis":
            if f.side == "right":
                dome_right -= 0.035 * f.severity
            else:
                dome_left -= 0.035 * f.severity
    return dome_right, dome_left


def _body(frame: _Frame) -> np.ndarray:
    """Soft tissue [H, W]: neck, rounded shoulders, chest wall and upper arms; thicker (brighter) at the midline."""
    Y, ax = frame.Y, np.abs(frame.X)
    shoulder = -0.4 + 2.0 * np.clip(ax - 0.12, 0, None) ** 1.5
    trunk = _soft(0.44 - ax, 0.02) * _soft(Y - shoulder, 0.03)
    arms = _soft(0.05 - np.abs(ax - 0.5), 0.02) * _soft(Y + 0.3 - 0.3 * (ax - 0.45), 0.04)
    body = np.maximum(np.maximum(trunk, arms), _soft(0.085 - ax, 0.02) * (Y < -0.3))
    return body * (0.86 + 0.14 * np.clip(1 - (ax / 0.45) ** 2, 0, 1))


def _heart(frame: _Frame, case: Case) -> tuple[np.ndarray, float]:
    """Heart shadow [H, W] (its width = cardiothoracic ratio x thorax width) and the height of its base."""
    an, X, Y = case.anatomy, frame.X, frame.Y
    ctr = an.ctr
    for f in case.findings:
        if f.kind == "cardiomegaly":
            ctr = 0.5 + 0.18 * f.severity if f.certain else 0.5 + 0.04 * f.severity
    heart_w = ctr * 2 * (an.lung_gap + an.lung_w * 1.1)
    heart_b = 0.07 + 0.22 * heart_w
    base = an.dome_right + 0.025  # the heart sits on the (unlifted) left hemidiaphragm
    hx, hy = 0.045 + 0.15 * heart_w, base - 0.6 * heart_b
    heart = _soft(1 - np.sqrt(((X - hx) / (heart_w / 2)) ** 2 + ((Y - hy) / heart_b) ** 2), 0.06)
    # below the diaphragm the heart merges with the abdomen
    return heart * _soft(base - 0.02 - Y, 0.02), base


def _lung_air(frame: _Frame, case: Case, lung_soft: np.ndarray, heart: np.ndarray,
              markings: np.ndarray) -> np.ndarray:
    """Air fraction [H, W] of the normal lungs: minus heart, mediastinum and aortic knob; with vessels radiating
    from the hila, fine texture, denser hila and (women) breast shadows."""
    X, Y = frame.X, frame.Y
    mediastinum = _soft(0.055 + 0.015 * (Y > -0.15) - np.abs(X - 0.005), 0.01) * (Y < 0.05)
    knob = _soft(0.032 - np.sqrt((X - 0.055) ** 2 + (Y + 0.17) ** 2), 0.01)
    air = lung_soft * (1 - 0.9 * heart) * (1 - mediastinum) * (1 - 0.7 * knob)
    vessels = np.zeros_like(X)
    for sgn in (-1.0, 1.0):
        dx, dy = X - sgn * 0.085, Y + 0.01
        radius = np.sqrt(dx * dx + dy * dy)
        angle = np.arctan2(dy, sgn * dx)
        streak = np.cos(angle * 23 + 2.0 * np.sin(angle * 7 + sgn)) * np.cos(angle * 37 + 1.3)
        vessels = np.maximum(vessels, np.clip(streak, 0, 1) ** 2 * np.exp(-radius / 0.12))
    air = air * (0.84 - 0.06 * np.clip(markings, -1, 2) - 0.35 * vessels)
    hilum_dist = np.minimum(np.abs(X + 0.085), np.abs(X - 0.085)) + np.abs(Y + 0.01) * 0.5
    air = air * (0.72 + 0.28 * np.clip(hilum_dist / 0.15, 0, 1))
    if case.anatomy.sex == "Female":
        for sgn in (-1.0, 1.0):
            air = air * (1 - 0.18 * _soft(0.11 - np.sqrt(((X - sgn * 0.22) / 1.3) ** 2 + (Y - 0.16) ** 2), 0.06))
    return air


def _bones(frame: _Frame, an, lung_soft: np.ndarray) -> np.ndarray:
    """Bone density [H, W]: posterior ribs (arcs Y = y0 + k spacing - 0.03 u + 0.16 u^2 as one periodic pattern),
    fainter anterior ribs, clavicles and the spine with its vertebrae."""
    X, Y, ax = frame.X, frame.Y, np.abs(frame.X)
    u = (ax - 0.03) / 0.35
    rib_pos = (Y + 0.33 - an.rib_phase + 0.03 * u - 0.16 * u ** 2) / an.rib_spacing
    rib_dist = np.abs(rib_pos - np.round(rib_pos)) * an.rib_spacing
    ribs = _soft(0.009 - rib_dist, 0.006) * (rib_pos > -0.5) * (rib_pos < 9.5)
    ribs = ribs * (ax > 0.035) * _soft(an.lung_gap + an.lung_w * 1.25 - ax, 0.02) * (Y < 0.25)
    front_pos = (Y + 0.22 - an.rib_phase - 0.1 * u + 0.05 * u ** 2) / (an.rib_spacing * 1.3)
    front = _soft(0.007 - np.abs(front_pos - np.round(front_pos)) * an.rib_spacing * 1.3, 0.008)
    front = front * (front_pos > -0.5) * (front_pos < 5.5) * (ax > 0.06)
    ribs = np.maximum(ribs, 0.5 * front * _soft(an.lung_gap + an.lung_w - ax, 0.04))
    ribs = ribs * (0.35 + 0.65 * lung_soft)
    clav_y = -0.3 - 0.12 * (ax - 0.04) + 0.5 * (ax - 0.17) ** 2
    clav = _soft(0.013 - np.abs(Y - clav_y), 0.006) * _soft(ax - 0.04, 0.01) * _soft(0.31 - ax, 0.02)
    spine = _soft(0.035 - np.abs(X - 0.005), 0.008) * (0.7 + 0.3 * np.cos(Y * (2 * np.pi / 0.05)))
    return 0.045 * ribs + 0.12 * clav + 0.1 * spine


def render(case: Case, height: int, width: int, rng: np.random.Generator) -> Rendered:
    """Draw `case` at height x width pixels; randomness (textures, blob shapes, noise) comes from `rng`."""
    if case.view == "LATERAL":
        return _render_lateral(case, height, width, rng)
    frame = _Frame(case, height, width)
    an, X, Y = case.anatomy, frame.X, frame.Y
    # background textures first, so that adding a finding leaves every other pixel of the patient unchanged
    markings = _smooth_noise(rng, height, width, 14)
    illumination = _smooth_noise(rng, height, width, 4)
    grain = rng.standard_normal((height, width), dtype=np.float32)
    boxes: dict[int, list[int] | None] = {}

    dome_right, dome_left = _lift_domes(case)
    lungs = {"right": _Lung(frame, "right", dome_right), "left": _Lung(frame, "left", dome_left)}
    lung_soft = np.maximum(lungs["right"].soft, lungs["left"].soft)
    body = _body(frame)
    heart, heart_base = _heart(frame, case)
    air = _lung_air(frame, case, lung_soft, heart, markings)

    opacity, ptx_mask, nodules = _lung_opacities(frame, lungs, case, rng, boxes)
    for i, f in enumerate(case.findings):
        if f.kind == "atelectasis":  # the region includes the lung base given up to the lifted hemidiaphragm
            unlifted = _Lung(frame, f.side, an.dome_right + (0.0 if f.side == "right" else 0.025))
            boxes[i] = _union([boxes.get(i), _bbox(unlifted.hard & ~lungs[f.side].hard)])
        elif f.kind == "cardiomegaly":
            boxes[i] = _bbox((heart > 0.5) & (Y < heart_base))
    # pneumothorax pixels (opacity < 0) hold free air: no tissue, so more lucent than aerated lung and without
    # its markings; drawn 60% of the way from the lung's own air to fully lucent, as subtle as a real one
    lucent = 1.2 * lung_soft * (1 - 0.9 * heart)
    air = np.where(opacity < 0, air + 0.6 * (lucent - air), air * (1 - np.clip(opacity, 0, 1)))
    # below the domes: the liver (right, dense) and the gastric air bubble under the left dome
    liver = _soft(Y - lungs["right"].dome, 0.02) * (X < 0.05) * body
    bubble = _soft(0.03 - np.sqrt(((X - 0.21) / 1.4) ** 2 + (Y - heart_base - 0.06) ** 2), 0.01)
    atten = 0.06 + 0.46 * body - 0.34 * air + 0.06 * heart + 0.08 * nodules + 0.03 * liver - 0.2 * bubble
    atten = atten + _bones(frame, an, lung_soft)

    value = np.clip(atten * an.contrast + an.brightness, 0, 1) ** np.float32(an.gamma)
    value = value + 0.03 * illumination + np.float32(an.noise) * grain
    objects: list = []
    metal = _metal_layer(frame, case, rng, boxes, objects)
    value = np.where(metal > 0, metal, value)
    image = np.clip(value * 255 + 0.5, 0, 255).astype(np.uint8)
    return Rendered(image=image, boxes=boxes, ptx_mask=ptx_mask, objects=objects)


def _render_lateral(case: Case, height: int, width: int, rng: np.random.Generator) -> Rendered:
    """A lateral view (loaders drop these; it only has to look like one): spine at the back (image right),
    retrosternal and retrocardiac clear spaces, the heart in front, the domes below."""
    frame = _Frame(case, height, width)
    X, Y = frame.X, frame.Y
    body = _soft(0.34 - np.abs(X + 0.02), 0.03) * _soft(Y + 0.45, 0.02)
    lung = _soft(1 - np.sqrt(((X - 0.02) / 0.24) ** 2 + ((Y + 0.0) / 0.3) ** 2), 0.12) * _soft(0.2 - Y, 0.02)
    heart = _soft(1 - np.sqrt(((X + 0.1) / 0.13) ** 2 + ((Y - 0.1) / 0.12) ** 2), 0.12)
    spine = _soft(0.045 - np.abs(X - 0.24 - 0.1 * Y ** 2), 0.01) * (0.7 + 0.3 * np.cos(Y * (2 * np.pi / 0.055)))
    texture = _smooth_noise(rng, height, width, 10)
    atten = 0.06 + 0.48 * body - 0.3 * lung * (1 - 0.8 * heart) * (0.9 - 0.05 * texture) + 0.14 * spine
    value = np.clip(atten, 0, 1) + case.anatomy.noise * rng.standard_normal(X.shape, dtype=np.float32)
    return Rendered(image=np.clip(value * 255 + 0.5, 0, 255).astype(np.uint8))
