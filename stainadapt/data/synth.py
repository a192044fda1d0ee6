"""Synthetic renal tissue in several stains: the embedded, offline default data set.

(One module of ~550 lines: the geometry generator, the per-stain tables and the renderer
share private helpers and constants that make sense only together.)

How a tile is made (all vectorised numpy/scipy; no per-pixel Python loops):

1. **Geometry** (:func:`tissue_geometry`, the same generator for every stain). A tile has
   its own magnification: the reference glomerular radius ``R`` is drawn between 13 % and
   30 % of the tile side and every other length is given in units of ``R / 100``.
   Glomeruli (0, 1 or 2 per tile, centres anywhere, so some touch the border) are oval
   with a wavy outline; inside Bowman's capsule sits a lobulated tuft packed with
   capillary loops (lumens, some holding red cells, each ringed by basement membrane),
   mesangial matrix between the loops and many nuclei; Bowman's space separates tuft and
   capsule. An arteriole (media, elastic lamina, lumen with red cells) appears in some
   tiles. The rest is tubules: a Voronoi tessellation stretched along one tile-wide
   direction (tubules in a section are elongated and roughly parallel), each cell an
   epithelial ring with basal nuclei and a lumen, wrapped in tubular basement membrane,
   separated by interstitium (collagen, fibroblast nuclei). Some tiles show slide glass.
   The result is a set of **component maps** (nuclei, cytoplasm, basement membrane,
   mesangial matrix, collagen, red cells, lumen debris) and the mask: glomerulus
   including Bowman's capsule.
2. **Rendering** (:func:`render`, per stain). Each component deposits stain
   concentrations (a stain x component table per stain, jittered per tile); optical
   density is ``OD = sum_k c_k * v_k`` with per-stain OD vectors, transmitted light is
   ``I = I0 * 10**(-OD)`` (Beer-Lambert), then optical blur, uneven illumination and
   sensor noise (signal-dependent) are applied. PASM: black silver on every basement
   membrane (capillary loops, Bowman's capsule, tubular basement membranes) and on
   mesangium, on a pale haematoxylin & eosin counterstain. Masson's trichrome: dark
   nuclei, red cytoplasm and red cells, blue collagen (interstitium, Bowman's capsule,
   membranes, mesangium), with lower contrast, more blur and more noise.

The same glomerulus geometry under different renderings is what makes the two stains
a *domain shift* rather than two different tasks.

Determinism: tile ``i`` of stain ``s`` uses ``numpy.random.default_rng([seed,
STAIN_IDS[s], i, SYNTH_VERSION])`` -- independent streams per stain (so S and T tiles
are not paired copies of one another) and per tile (so ``n`` does not change tile 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError

__all__ = [
    "COMPONENTS",
    "STAINS",
    "SYNTH_VERSION",
    "generate",
    "make_tile",
    "render",
    "tissue_geometry",
]

#: Bump when the output for a given seed changes (the cache folder name includes it).
SYNTH_VERSION = 2

COMPONENTS = ("nuclei", "cytoplasm", "membrane", "mesangium", "collagen", "rbc", "debris")

# --------------------------------------------------------------------- stain vectors
# Optical-density vectors (R, G, B), normalised to unit length in ``_unit``.
# Haematoxylin and eosin: Ruifrok & Johnston, "Quantification of histochemical staining
# by color deconvolution", Anal. Quant. Cytol. Histol. 23 (2001) -- the values also used
# by scikit-image's ``hed_from_rgb``.
HAEMATOXYLIN = (0.650, 0.704, 0.286)
EOSIN = (0.072, 0.990, 0.105)
# Periodic acid-Schiff: scikit-image ``hpx_from_rgb`` (H + PAS), after Ruifrok's macro.
PAS = (0.1754, 0.9722, 0.1546)
# Masson's trichrome: scikit-image ``bpx_from_rgb`` / Fiji Colour Deconvolution
# "Masson Trichrome" (methyl blue; ponceau-fuchsin).
METHYL_BLUE = (0.7995, 0.5914, 0.1053)
PONCEAU_FUCHSIN = (0.0999, 0.7374, 0.6680)
# Methenamine silver: no published vector; a near-neutral black deposit, ~(0.58, 0.58,
# 0.58) OD (project choice, slightly warm/brown after comparing with a Jones silver
# section by eye).
SILVER = (0.60, 0.58, 0.55)


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


@dataclass(frozen=True)
class StainModel:
    """How one stain renders the component maps."""

    name: str
    vectors: dict[str, tuple[float, float, float]]
    #: stain -> {component: OD concentration deposited by a unit of that component}
    table: dict[str, dict[str, float]]
    contrast: float = 1.0  # multiplies every concentration
    haze: float = 0.03  # uniform OD added on tissue (background counterstain)
    blur: float = 0.6  # optical blur sigma, in pixels at 512 px / R = 100 units
    noise: float = 2.0  # sensor noise sigma (grey levels at full intensity)
    illumination: float = 0.04  # amplitude of slow illumination changes
    jitter: float = 0.12  # per-tile relative jitter of every stain amount
    description: str = ""


STAINS: dict[str, StainModel] = {
    "pasm": StainModel(
        name="pasm",
        vectors={"haematoxylin": HAEMATOXYLIN, "eosin": EOSIN, "pas": PAS, "silver": SILVER},
        table={
            "haematoxylin": {"nuclei": 0.9, "cytoplasm": 0.07, "mesangium": 0.08},
            "eosin": {
                "cytoplasm": 0.30,
                "rbc": 0.85,
                "collagen": 0.25,
                "debris": 0.30,
                "nuclei": 0.12,
                "mesangium": 0.15,
            },
            "pas": {"membrane": 0.25, "mesangium": 0.25, "cytoplasm": 0.10, "debris": 0.1},
            "silver": {"membrane": 1.60, "mesangium": 0.55, "collagen": 0.22, "nuclei": 0.05},
        },
        contrast=1.0,
        haze=0.04,
        blur=0.55,
        noise=2.0,
        illumination=0.04,
        description="periodic acid-methenamine silver: black basement membranes and "
        "mesangium on a pale haematoxylin & eosin counterstain",
    ),
    "masson": StainModel(
        name="masson",
        vectors={"haematoxylin": HAEMATOXYLIN, "ponceau": PONCEAU_FUCHSIN, "blue": METHYL_BLUE},
        table={
            "haematoxylin": {"nuclei": 1.0, "cytoplasm": 0.05},
            "ponceau": {
                "cytoplasm": 0.45,
                "rbc": 1.0,
                "nuclei": 0.25,
                "mesangium": 0.35,
                "debris": 0.25,
            },
            "blue": {"collagen": 0.55, "membrane": 0.80, "mesangium": 0.70, "cytoplasm": 0.04},
        },
        contrast=0.75,
        haze=0.10,
        blur=1.0,
        noise=6.0,
        illumination=0.09,
        description="Masson's trichrome: dark nuclei, red cytoplasm and red cells, blue "
        "collagen and membranes; lower contrast, more blur and noise",
    ),
    "pas": StainModel(
        name="pas",
        vectors={"haematoxylin": HAEMATOXYLIN, "pas": PAS},
        table={
            "haematoxylin": {"nuclei": 0.95, "cytoplasm": 0.12, "mesangium": 0.1},
            "pas": {
                "membrane": 0.95,
                "mesangium": 0.55,
                "cytoplasm": 0.35,
                "rbc": 0.4,
                "collagen": 0.25,
                "debris": 0.3,
            },
        },
        contrast=1.0,
        haze=0.05,
        blur=0.6,
        noise=3.0,
        illumination=0.05,
        description="periodic acid-Schiff with haematoxylin: magenta membranes and "
        "mesangium, blue-purple nuclei",
    ),
}
STAIN_IDS = {"pasm": 1, "masson": 2, "pas": 3}


# ------------------------------------------------------------------------ helpers


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def _lowfreq(rng, size: int, cells: float = 4) -> np.ndarray:
    """Very smooth noise (about ``cells`` bumps across the tile), unit std.

    A sum of random plane waves: cheap and smooth at any size.
    """
    yy, xx = _grid(size)
    out = np.zeros((size, size), np.float32)
    for _ in range(6):
        k = 2 * np.pi * rng.uniform(0.5, 1.0) * cells / size
        a = rng.uniform(0, 2 * np.pi)
        out += np.cos(k * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 2 * np.pi))
    return (out - out.mean()) / (out.std() + 1e-6)


def _gauss_line(d: np.ndarray, width: float) -> np.ndarray:
    """A soft line of given half-width where ``d`` is 0."""
    return np.exp(-0.5 * (d / width) ** 2)


def _sample_points(rng, prob: np.ndarray, density: float) -> np.ndarray:
    """Random points (y, x) with intensity ``density * prob`` per pixel (prob in [0, 1])."""
    h, w = prob.shape
    n = rng.poisson(density * h * w)
    if n == 0:
        return np.zeros((0, 2), np.int64)
    ys = rng.integers(0, h, n)
    xs = rng.integers(0, w, n)
    keep = rng.random(n) < prob[ys, xs]
    return np.stack([ys[keep], xs[keep]], axis=1)


def _nearest(points: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest point and that point's index, for every pixel."""
    if len(points) == 0:
        return np.full(shape, 1e6, np.float32), np.zeros(shape, np.int64)
    seeds = np.ones(shape, bool)
    seeds[points[:, 0], points[:, 1]] = False
    ids = np.full(shape, -1, np.int64)
    ids[points[:, 0], points[:, 1]] = np.arange(len(points))
    dist, (iy, ix) = ndi.distance_transform_edt(seeds, return_indices=True)
    return dist.astype(np.float32), ids[iy, ix]


def _discs(rng, points, shape, radius: float, spread: float, px_floor: float = 0.8):
    """Soft discs (nuclei) of radius ``radius * U(1-spread, 1+spread)`` at ``points``."""
    dist, idx = _nearest(points, shape)
    if len(points) == 0:
        return np.zeros(shape, np.float32)
    radii = (radius * rng.uniform(1 - spread, 1 + spread, len(points))).astype(np.float32)
    dark = rng.uniform(0.75, 1.15, len(points)).astype(np.float32)
    r = radii[idx]
    edge = max(px_floor, 0.12 * radius)
    return (np.clip((r - dist) / edge + 0.5, 0, 1) * dark[idx]).astype(np.float32)


def _polar_wave(rng, phi: np.ndarray, ks, amp: float) -> np.ndarray:
    out = np.ones_like(phi)
    for k in ks:
        out += rng.uniform(0.3, 1.0) * amp * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return out


# ----------------------------------------------------------------------- geometry


def tissue_geometry(size: int, rng: np.random.Generator) -> tuple[dict, np.ndarray, dict]:
    """Component maps (float32, ``COMPONENTS``), the glomerulus mask and tile facts."""
    s = size
    yy, xx = _grid(s)
    big_r = s * rng.uniform(0.13, 0.30)  # reference glomerular radius: the magnification
    u = big_r / 100.0  # one length unit in pixels
    shape = (s, s)

    # --- glomeruli
    n_glom = int(rng.choice([0, 1, 2], p=[0.15, 0.65, 0.20]))
    gloms = []
    for _ in range(n_glom):
        for _try in range(30):
            r = big_r * rng.uniform(0.85, 1.15)
            c = rng.uniform(-0.35 * r, s + 0.35 * r, 2)
            if all(np.hypot(*(c - g[0])) > 1.15 * (r + g[1]) for g in gloms):
                gloms.append((c, r))
                break
    rho = np.full(shape, 9.0, np.float32)  # outer (capsule) coordinate: 1 on the outline
    tuft_rho = np.full(shape, 9.0, np.float32)  # tuft coordinate: 1 on the tuft outline
    for (cy, cx), r in gloms:
        theta = rng.uniform(0, np.pi)
        aspect = rng.uniform(0.75, 1.0)
        dy, dx = yy - cy, xx - cx
        pu = dx * np.cos(theta) + dy * np.sin(theta)
        pv = (-dx * np.sin(theta) + dy * np.cos(theta)) / aspect
        rr = np.hypot(pu, pv) / r
        phi = np.arctan2(pv, pu)
        outer = _polar_wave(rng, phi, (2, 3, 4), 0.035)
        tuft = rng.uniform(0.82, 0.95) * _polar_wave(rng, phi, rng.integers(4, 9, 3), 0.05)
        rho = np.minimum(rho, rr / outer)
        tuft_rho = np.minimum(tuft_rho, rr / tuft)
    mask = rho <= 1.0
    # distance in pixels inside (+) / outside (-) the capsule outline (approximate)
    cap_d = (1.0 - rho) * big_r

    comp = {k: np.zeros(shape, np.float32) for k in COMPONENTS}
    membrane_w = max(0.7, 1.1 * u)

    # --- vessel (arteriole): another round structure that is NOT a glomerulus
    ves_d = np.full(shape, -1e6, np.float32)
    if rng.random() < 0.35:
        vr = big_r * rng.uniform(0.25, 0.5)
        for _try in range(30):
            c = rng.uniform(0, s, 2)
            if (
                rho[int(np.clip(c[0], 0, s - 1)), int(np.clip(c[1], 0, s - 1))]
                > 1.0 + 1.3 * (vr / big_r) + 0.2
            ):
                vrr = np.hypot(yy - c[0], xx - c[1]) / vr
                vrr = vrr / _polar_wave(rng, np.arctan2(yy - c[0], xx - c[1]), (2, 3), 0.05)
                ves_d = (1.0 - vrr) * vr
                inner = rng.uniform(0.4, 0.55)
                media = (vrr < 1.0) & (vrr > inner)
                comp["cytoplasm"] += media * 0.8
                comp["collagen"] += np.clip(1 - np.abs(vrr - 1.0) * vr / (4 * u), 0, 1) * 0.8
                comp["membrane"] += _gauss_line((vrr - inner) * vr, membrane_w)
                lum = vrr < inner
                comp["rbc"] += lum * (_smooth_noise(rng, shape, 1.5 * u) > 0.3)
                pts = _sample_points(rng, media.astype(np.float32), 1 / (9 * u) ** 2)
                comp["nuclei"] += _discs(rng, pts, shape, 3.5 * u, 0.3)
                break

    # --- tubules: stretched Voronoi cells in a rotated frame, sampled back to pixels
    theta = rng.uniform(0, np.pi)
    stretch = rng.uniform(1.0, 2.3)
    spacing = rng.uniform(70, 100) * u  # tubule diameter across its short axis
    step = max(1.0, u * 1.5)  # grid step of the tubule frame, in pixels
    cos, sin = np.cos(theta), np.sin(theta)
    tu = ((xx - s / 2) * cos + (yy - s / 2) * sin) / stretch  # along tubules, shrunk
    tv = -(xx - s / 2) * sin + (yy - s / 2) * cos
    half = s * 0.75
    n_grid = int(np.ceil(2 * half / step)) + 1
    gy = ((tv + half) / step).astype(np.float32)
    gx = ((tu + half) / step).astype(np.float32)
    # seeds on a jittered lattice: tubules of similar calibre
    sp = spacing / step
    ax = np.arange(sp / 2, n_grid, sp)
    lat = np.stack(np.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    lat[:, 1] += (np.arange(len(lat)) // len(ax) % 2) * sp / 2  # hexagonal-ish rows
    lat += rng.uniform(-0.3, 0.3, lat.shape) * sp
    cell_pts = np.clip(np.rint(lat), 0, n_grid - 1).astype(np.int64)
    n_cells = len(cell_pts)
    d_seed, lab = _nearest(cell_pts, (n_grid, n_grid))
    boundary = np.zeros((n_grid, n_grid), bool)
    boundary[:-1] |= lab[:-1] != lab[1:]
    boundary[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    depth_grid = ndi.distance_transform_edt(~boundary).astype(np.float32) * step
    # round the polygonal cells: a tubule is at most a disc around its seed
    r_cell = (0.5 * spacing * rng.uniform(0.95, 1.3, n_cells)).astype(np.float32)[lab]
    depth_grid = np.minimum(depth_grid, r_cell - d_seed * step)
    depth_grid += (3.0 * u) * _smooth_noise(rng, (n_grid, n_grid), 6 * u / step)
    coords = np.stack([gy, gx])
    depth = ndi.map_coordinates(depth_grid, coords, order=1, mode="nearest")
    label = ndi.map_coordinates(lab, coords, order=0, mode="nearest")
    gap = rng.uniform(2.0, 5.0) * u * (1 + 0.5 * np.clip(_lowfreq(rng, s, 3), -1, 2))
    # tubules flatten against glomeruli and vessels
    avoid = np.minimum(-cap_d, -ves_d) - 2.0 * u
    depth = np.minimum(depth, avoid + gap)
    epi = rng.uniform(11, 20, n_cells)[label] * u
    collapsed = rng.random(n_cells)[label] < 0.2
    epi = np.where(collapsed, 1e6, epi)

    tissue_t = depth > gap
    membrane_t = _gauss_line(depth - gap, membrane_w) * (avoid > -gap)
    epithelium = tissue_t & (depth < gap + epi)
    lumen_t = tissue_t & ~epithelium
    grain = _smooth_noise(rng, shape, max(0.6, 1.2 * u))
    cell_tone = rng.uniform(0.75, 1.2, n_cells)[label].astype(np.float32)
    comp["cytoplasm"] += epithelium * cell_tone * np.clip(1 + 0.35 * grain, 0.2, 2)
    comp["debris"] += lumen_t * np.clip(_smooth_noise(rng, shape, 2 * u) - 1.0, 0, 1)
    comp["membrane"] += membrane_t
    interst = (depth <= gap) & (cap_d < -1.0 * u) & (ves_d < -1.0 * u)
    fibres = _smooth_noise(rng, shape, max(0.7, 1.5 * u))
    comp["collagen"] += interst * np.clip(0.7 + 0.4 * fibres, 0, 1.5)
    # nuclei: tubular (mid-epithelium), interstitial (sparse)
    epi_mid = epithelium & (depth > gap + 4 * u) & (depth < gap + np.minimum(epi, 40 * u) - 3 * u)
    pts = _sample_points(rng, epi_mid.astype(np.float32), 1 / (15 * u) ** 2)
    comp["nuclei"] += _discs(rng, pts, shape, 5.0 * u, 0.2)
    pts = _sample_points(rng, interst.astype(np.float32), 1 / (30 * u) ** 2)
    comp["nuclei"] += _discs(rng, pts, shape, 3.2 * u, 0.3)
    # peritubular capillaries: red cells in the interstitium here and there
    comp["rbc"] += interst * (_smooth_noise(rng, shape, 1.5 * u) > 1.6)

    # --- glomeruli contents
    if gloms:
        in_tuft = tuft_rho < 1.0
        # capsule: basement membrane + thin fibrous layer + flat parietal nuclei
        comp["membrane"] += _gauss_line(cap_d - 1.5 * u, membrane_w) * (cap_d > -3 * u)
        comp["collagen"] += np.clip(1 - np.abs(cap_d - 2 * u) / (3 * u), 0, 1) * 0.6
        parietal = (cap_d > 2 * u) & (cap_d < 5 * u)
        pts = _sample_points(rng, parietal.astype(np.float32), 1 / (18 * u) ** 2)
        comp["nuclei"] += _discs(rng, pts, shape, 2.5 * u, 0.2)
        # capillary loops: lumens ringed by basement membrane; mesangium between
        lum_pts = _sample_points(rng, in_tuft.astype(np.float32), 1 / (11 * u) ** 2)
        dl, il = _nearest(lum_pts, shape)
        n_l = max(1, len(lum_pts))
        r_l = rng.uniform(2.5, 5.5, n_l).astype(np.float32)[il] * u
        has_rbc = rng.random(n_l)[il] < 0.3
        lumen_g = in_tuft & (dl < r_l)
        loop = _gauss_line(dl - r_l, membrane_w) * in_tuft
        tuft_cells = in_tuft & ~lumen_g
        comp["membrane"] += loop
        comp["rbc"] += lumen_g * has_rbc * (dl < 0.7 * r_l)
        mes = tuft_cells * np.clip((dl - r_l - 1.5 * u) / (3 * u), 0, 1)
        comp["mesangium"] += mes * np.clip(0.8 + 0.3 * grain, 0, 1.5)
        comp["cytoplasm"] += tuft_cells * 0.55
        pts = _sample_points(
            rng, (tuft_cells & (dl > r_l + 1.0 * u)).astype(np.float32), 1 / (9 * u) ** 2
        )
        comp["nuclei"] += _discs(rng, pts, shape, 3.6 * u, 0.25)
        # Bowman's space stays empty: clear tubule material inside the capsule
        inside = cap_d > 3.0 * u
        for k in ("cytoplasm", "debris", "collagen"):
            comp[k] = np.where(inside & ~in_tuft, 0.0, comp[k])
        comp["cytoplasm"] = np.where(in_tuft, tuft_cells * 0.55, comp["cytoplasm"])

    # --- slide glass: a smooth region free of tissue (never over a glomerulus)
    facts = {"glomeruli": len(gloms), "radius_px": float(big_r), "vessel": bool((ves_d > 0).any())}
    if rng.random() < 0.3:
        field = _lowfreq(rng, s, 2)
        glass = (field > rng.uniform(1.1, 1.9)) & (rho > 1.2) & (ves_d < -3 * u)
        if glass.any():
            keep = ndi.gaussian_filter((~glass).astype(np.float32), 1.5 * u + 0.5)
            for k in COMPONENTS:
                comp[k] *= keep
    for k in COMPONENTS:
        np.clip(comp[k], 0, 2, out=comp[k])
    facts["unit_px"] = float(u)
    return comp, mask, facts


# ---------------------------------------------------------------------- rendering


def render(
    comp: dict, stain: str | StainModel, rng: np.random.Generator, unit_px: float = 1.0
) -> np.ndarray:
    """Beer-Lambert rendering of component maps in one stain: ``(H, W, 3) uint8``."""
    model = STAINS[stain] if isinstance(stain, str) else stain
    shape = next(iter(comp.values())).shape
    tissue = np.zeros(shape, np.float32)
    for k in COMPONENTS:
        tissue = np.maximum(tissue, np.minimum(comp[k], 1.0))
    od = np.zeros((3, *shape), np.float32)
    for stain_name, row in model.table.items():
        vec = _unit(model.vectors[stain_name])
        vec = _unit(vec + rng.normal(0, 0.03, 3).astype(np.float32))  # batch-to-batch hue
        amount = model.contrast * rng.uniform(1 - model.jitter, 1 + model.jitter)
        conc = np.zeros(shape, np.float32)
        for comp_name, weight in row.items():
            conc += weight * comp[comp_name]
        conc *= amount
        od += vec[:, None, None] * conc[None]
    # faint counterstain everywhere there is tissue, and a slightly tinted glass
    haze_vec = _unit(model.vectors[next(iter(model.table))])
    haze = model.haze * ndi.gaussian_filter(tissue, 2.0) + 0.015
    od += haze_vec[:, None, None] * haze[None]
    light = rng.uniform(235, 250) * (1 + model.illumination * _lowfreq(rng, shape[0], 2))
    img = light[None] * np.power(10.0, -od, dtype=np.float32)
    sigma = model.blur * max(1.0, unit_px * 0.6)
    img = ndi.gaussian_filter(img, (0, sigma, sigma))
    noise_sd = model.noise * np.sqrt(np.clip(img, 1, None) / 255.0)
    img += noise_sd * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()


def make_tile(stain: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic tile: ``(image (S, S, 3) uint8, mask (S, S) bool)``."""
    comp, mask, facts = tissue_geometry(size, rng)
    return render(comp, stain, rng, facts["unit_px"]), mask


def tile_rng(seed: int, stain: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), STAIN_IDS[stain], int(index), SYNTH_VERSION])


# ------------------------------------------------------------------------ writing

README = """\
Synthetic renal tissue made by stainadapt {version} (synthetic data version {sv}).

Command : stainadapt synth {out} {stain_args} -n {n} --size {size} --seed {seed}
Content : {n} tiles of {size}x{size} px per stain
{stain_lines}
Layout  : <stain>/images/<stain>_NNNN.png  RGB tiles
          <stain>/masks/<stain>_NNNN.png   glomerulus masks, 0 = background, 255 = glomerulus
                                           (glomerulus including Bowman's capsule)

How it is made: one tissue-geometry generator (glomeruli with capillary loops,
mesangium, nuclei, Bowman's space and capsule; stretched Voronoi tubules with epithelium,
basal nuclei, lumens and basement membranes; interstitial collagen; an occasional
arteriole; some slide glass) produces component maps; each stain renders them through
its own stain x component table and optical-density vectors with the Beer-Lambert law
(I = I0 * 10^-OD), followed by optical blur, uneven illumination and sensor noise.
Every stain folder comes from its own random stream (seed, stain, tile index), so the
stains are NOT paired copies of the same tissue. The magnification varies per tile
(glomerular radius 13-30 % of the tile side); ~15 % of tiles hold no glomerulus.
Same seed, size and version give byte-identical files.
"""


def generate(
    out: Path | str,
    stains: Sequence[str] = ("pasm", "masson"),
    n: int = 100,
    size: int = 512,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``out/<stain>/images/*.png``, ``out/<stain>/masks/*.png`` and ``out/README.txt``."""
    from ..version import __version__
    from .io import write_image

    out = Path(out)
    stains = list(dict.fromkeys(s.lower() for s in stains))
    unknown = [s for s in stains if s not in STAINS]
    if unknown:
        raise InputError(f"unknown stain {unknown[0]!r}; choose from {', '.join(STAINS)}")
    if not stains:
        raise InputError("no stain given (use --stain pasm --stain masson)")
    if n < 1:
        raise InputError(f"-n must be at least 1 (got {n})")
    if size < 32 or size > 8192:
        raise InputError(f"--size must be between 32 and 8192 (got {size})")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    total = n * len(stains)
    done = 0
    for stain in stains:
        for i in range(n):
            img, mask = make_tile(stain, size, tile_rng(seed, stain, i))
            name = f"{stain}_{i:04d}.png"
            write_image(out / stain / "images" / name, img)
            write_image(out / stain / "masks" / name, mask)
            done += 1
            if progress is not None:
                progress(done, total)
    lines = "\n".join(f"Stain   : {s}: {STAINS[s].description}" for s in stains)
    text = README.format(
        version=__version__,
        sv=SYNTH_VERSION,
        out=out,
        stain_args=" ".join(f"--stain {s}" for s in stains),
        n=n,
        size=size,
        seed=seed,
        stain_lines=lines,
    )
    (out / "README.txt").write_text(text)
    return out
