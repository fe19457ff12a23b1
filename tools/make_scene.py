#!/usr/bin/env python
"""Generate the embedded synthetic multi-view scene in COLMAP layout (no download needed).

    python tools/make_scene.py --out data/synth [--views 24 --width 960 --height 720 --kind llff|360 --seed 0]

writes

    DIR/images/view_000.png ...            full resolution (W x H), 2x2 supersampled ray casting
    DIR/images_2|4|8/view_000.png ...      exact area averages of images/ (W and H divisible by 8)
    DIR/sparse/0/cameras.bin               one PINHOLE camera, fx = fy, cx = W/2, cy = H/2 (COLMAP pixel
                                           convention: the centre of the top-left pixel is (0.5, 0.5))
    DIR/sparse/0/images.bin                exact world-to-camera poses (OpenCV axes: x right, y down,
                                           z forward) with the 2D observations of the points below
    DIR/sparse/0/points3D.bin              points on visible surfaces, their shaded colour and tracks
    DIR/scene_meta.json                    what was generated: objects, cameras, textures and licences

The scene: textured primitives (a ground plane, a back wall or a ring-shaped backdrop, boxes, spheres,
a drum) ray cast exactly in numpy. Textures are real photographs shipped inside scikit-image (public
domain / CC0, see TEXTURES), mip-mapped and sampled trilinearly, scaled so that the full-resolution
images carry fine detail (gravel, brick, handwriting, fur) that the 1/8 images lose. Shading is
Lambertian from one directional light plus ambient, with hard shadows cast by the objects; it does not
depend on the view, so the scene is exactly representable by view-independent radiance.

World frame: metres, +y up, the ground is the plane y = 0.
  --kind llff: forward-facing; cameras on a jittered grid in a plane in front of the scene, all looking
               at (about) the scene centre; an infinite textured back wall closes the view.
  --kind 360:  cameras on a ring around the objects at a slight elevation, looking at the centre; the
               scene is closed by a textured cylindrical backdrop of radius 10 m (unlit, infinite in
               height), so no view shows empty background.

The same seed gives byte-identical files; another seed moves the objects and jitters the cameras.
The output folder is written beside its final place and renamed into place at the end, so an
interrupted run never leaves a half-written scene.
"""
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.errors import SceneFormatError  # noqa: E402
from utils.system_utils import run_cli  # noqa: E402

GENERATOR_VERSION = 1
DOWNSCALES = (2, 4, 8)
SUPERSAMPLE = 2  # rays per pixel along each axis
FOCAL_OVER_WIDTH = 0.85  # fx = fy = 0.85 W: about 61 degrees horizontal field of view
KINDS = ("llff", "360")
RENDER_DTYPE = np.dtype(np.float32)
CHUNK_RAYS = 1 << 16
T_EPS = 1e-4
AMBIENT = 0.38
DIFFUSE = 0.62
BACKDROP_SHADE = 0.92
LIGHT_DIR = np.array([0.35, 0.8, 0.5]) / np.linalg.norm([0.35, 0.8, 0.5])  # towards the light

# Real photographs from scikit-image's bundled data (skimage/data/*.png, *.jpg); licences as stated in
# the docstrings of the corresponding skimage.data functions. Grey-scale ones are tinted.
TEXTURES = {
    "astronaut": dict(origin="NASA Great Images, https://flic.kr/p/r9qvLn (Eileen Collins)",
                      licence="public domain (NASA; no known copyright restrictions)"),
    "chelsea": dict(origin="Stefan van der Walt (Chelsea the cat)",
                    licence="CC0 (photographer Stefan van der Walt)"),
    "coffee": dict(origin="Rachel Michetti, courtesy of Pikolo Espresso Bar",
                   licence="CC0 (photographer Rachel Michetti)"),
    "rocket": dict(origin="SpaceX, https://www.flickr.com/photos/spacexphotos/16511594820/",
                   licence="public domain (released by SpaceX)"),
    "camera": dict(origin="Lav Varshney (man with a camera)", licence="CC0 (photographer Lav Varshney)",
                   tint=(0.95, 0.93, 0.88)),
    "text": dict(origin="Wikipedia, https://en.wikipedia.org/wiki/File:Corner.png (handwritten maths)",
                 licence="public domain (no known copyright restrictions)", tint=(0.97, 0.95, 0.86)),
    "brick": dict(origin="CC0Textures Bricks25, https://cc0textures.com/view.php?tex=Bricks25",
                  licence="CC0", tint=(1.0, 0.66, 0.52), rot90=True),
    "gravel": dict(origin="CC0Textures Gravel04, https://cc0textures.com/view.php?tex=Gravel04",
                   licence="CC0", tint=(0.92, 0.86, 0.76)),
    "grass": dict(origin="DeviantArt linolafett Grass-01, "
                  "https://www.deviantart.com/linolafett/art/Grass-01-434853879",
                  licence="CC0", tint=(0.62, 0.92, 0.42)),
}


class SceneArgumentError(SceneFormatError, ValueError):
    """A bad argument to make_scene (a ValueError that the CLI prints as one line)."""


# ---------------------------------------------------------------------------------------------
# textures


class Texture:
    """A photograph, mirrored to a seamless 2w x 2h tile, with an area-filtered mip pyramid.

    Texture coordinates are in units of the *original* photo: (u, v) in [0, 1]^2 is the photo itself
    (v down), [1, 2] its mirror image, and so on periodically. `lod` is log2 of the sample footprint
    measured in original-photo texels (<= 0: magnified, level 0).

    Texels are stored channel by channel (three flat float32 arrays holding every level) and looked up
    with 1-D np.take, which is an order of magnitude faster than gathering rows of a [M, 3] array.
    """

    def __init__(self, name, rgb):
        self.name = name
        self.h, self.w = rgb.shape[:2]
        tile = np.concatenate([rgb, rgb[:, ::-1]], axis=1)
        tile = np.concatenate([tile, tile[::-1]], axis=0).astype(np.float32)
        levels = [tile]
        while min(levels[-1].shape[:2]) >= 8:
            prev = levels[-1]
            levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
        self.nlevels = len(levels)
        self.widths = np.array([lv.shape[1] for lv in levels], np.int32)
        self.heights = np.array([lv.shape[0] for lv in levels], np.int32)
        self.sizes_c = (self.widths + 1j * self.heights).astype(np.complex64)
        # each level is stored with one extra (wrapped) column and row: the +1 neighbour never wraps
        padded = [np.concatenate([lv, lv[:, :1]], axis=1) for lv in levels]
        padded = [np.concatenate([lv, lv[:1]], axis=0) for lv in padded]
        sizes = np.array([lv.shape[0] * lv.shape[1] for lv in padded], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        flat = np.concatenate([lv.reshape(-1, 3) for lv in padded], axis=0)
        self.planes = [np.ascontiguousarray(flat[:, c]) for c in range(3)]  # one float32 array per channel

    def _bilinear(self, u, v, level):
        """Bilinear RGB lookup (three [N] arrays) at integer mip `level` (an int or a per-sample int32 array)."""
        dt = u.dtype
        if np.ndim(level) == 0:
            w, h, off = int(self.widths[level]), int(self.heights[level]), int(self.offsets[level])
            wf, hf = dt.type(w), dt.type(h)
        else:  # two small-table lookups per call: (w, h) packed as one complex64, and the offset
            wh = np.take(self.sizes_c, level)
            wf, hf = wh.real.astype(dt), wh.imag.astype(dt)
            w, h = wf.astype(np.int32), hf.astype(np.int32)
            off = np.take(self.offsets, level)
        stride = w + 1
        # the mirrored tile spans two photo widths: texel coordinate x = u * w / 2 - 0.5 at this level
        x = u * (wf * dt.type(0.5)) - dt.type(0.5)
        y = v * (hf * dt.type(0.5)) - dt.type(0.5)
        x -= np.floor(x / wf) * wf  # periodic wrap into [0, w)
        y -= np.floor(y / hf) * hf
        xf = np.floor(x)
        yf = np.floor(y)
        fx = x - xf
        fy = y - yf
        x0 = np.minimum(xf.astype(np.int32), w - 1)  # rounding can land exactly on w
        y0 = np.minimum(yf.astype(np.int32), h - 1)
        i00 = y0 * stride + x0 + off
        i01 = i00 + 1
        i10 = i00 + stride
        i11 = i10 + 1
        out = []
        for plane in self.planes:
            c00, c01, c10, c11 = (np.take(plane, i) for i in (i00, i01, i10, i11))
            top = c00 + (c01 - c00) * fx
            bot = c10 + (c11 - c10) * fx
            out.append(top + (bot - top) * fy)
        return out

    def sample(self, u, v, lod=None):
        """RGB as three [N] arrays in [0, 1]; trilinear when `lod` is given, else bilinear at full resolution."""
        if lod is None:
            return self._bilinear(u, v, 0)
        lod = np.clip(lod, 0.0, self.nlevels - 1.0)
        l0 = lod.astype(np.int32)
        frac = (lod - l0).astype(u.dtype)
        l1 = np.minimum(l0 + 1, self.nlevels - 1)
        a = self._bilinear(u, v, l0)
        b = self._bilinear(u, v, l1)
        return [ac + (bc - ac) * frac for ac, bc in zip(a, b)]


@functools.lru_cache(maxsize=None)
def load_texture(name):
    """Load one of TEXTURES from scikit-image's bundled data (offline) as a Texture."""
    import skimage.data

    info = TEXTURES[name]
    try:
        img = getattr(skimage.data, name)()
    except Exception as exc:  # pragma: no cover - depends on the installed scikit-image
        raise SceneFormatError(
            f"cannot load texture {name!r} from scikit-image's bundled data ({exc}); "
            f"install scikit-image>=0.22 (pip install scikit-image)") from None
    img = np.asarray(img)
    if info.get("rot90"):
        img = np.rot90(img)
    img = img.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = img[:, :, None] * np.asarray(info.get("tint", (1.0, 1.0, 1.0)), np.float32)
    img = np.ascontiguousarray(img[:, :, :3])
    return Texture(name, img)


# ---------------------------------------------------------------------------------------------
# geometry. Vectors are channel-major: [3, N] arrays (x, y, z rows), or [3, 1] for one shared
# origin / direction, so every operation is a fast 1-D loop and nothing calls BLAS (whose threads
# only cost time on these tiny inner dimensions). Every primitive answers
#   intersect(o, d) -> t [N] (inf = miss), d of unit length, and
#   surface(p, d) -> (normal [3,N], u [N], v [N], texels per metre: scalar or [N]).


def _col(x, dtype):
    return np.asarray(x, dtype=dtype).reshape(3, 1)


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _apply(M, v):
    """M @ v for a 3x3 float64 matrix M and a [3, N] vector array v (no BLAS)."""
    dt = v.dtype
    out = np.empty(v.shape, dt)
    for i in range(3):
        m0, m1, m2 = (dt.type(x) for x in M[i])
        out[i] = v[0] * m0 + v[1] * m1 + v[2] * m2
    return out


def _count(o, d):
    return max(o.shape[1], d.shape[1])


def _take(a, idx):
    """Columns idx of a [3, N] array; a [3, 1] array (shared vector) is returned as is."""
    return a if a.shape[1] == 1 else np.take(a, idx, axis=1)


def _bound_candidates(o, d, centre, radius):
    """Indices of the rays o + t d (t > 0) that pass through the sphere (centre, radius)."""
    dt = d.dtype
    oc = o - _col(centre, dt)
    b = _dot(d, oc)
    cc = _dot(oc, oc) - dt.type(radius * radius * 1.0001)
    hit = (b * b > cc) & ((b < 0) | (cc < 0))
    return np.nonzero(np.broadcast_to(hit, (_count(o, d),)))[0]


def _subset_intersect(prim, o, d, exact):
    """Run `exact` only on the rays that meet prim's bounding sphere; inf elsewhere."""
    c, r = prim.bounding_sphere()
    idx = _bound_candidates(o, d, c, r)
    t = np.full(_count(o, d), np.inf, d.dtype)
    if len(idx):
        t[idx] = np.broadcast_to(exact(_take(o, idx), _take(d, idx)), (len(idx),))
    return t


class Primitive:
    lit = True
    occluder = True

    def __init__(self, name, texture):
        self.name = name
        self.texture = texture

    def bounding_sphere(self):
        raise NotImplementedError


class Plane(Primitive):
    """Infinite plane through `point` with unit `normal`; the photo tiles every `tile` metres along u_axis."""

    occluder = False

    def __init__(self, name, texture, point, normal, u_axis, v_axis, tile):
        super().__init__(name, texture)
        self.point = np.asarray(point, float)
        self.normal = np.asarray(normal, float)
        self.u_axis = np.asarray(u_axis, float)
        self.v_axis = np.asarray(v_axis, float)
        self.tile = float(tile)

    def intersect(self, o, d):
        dt = d.dtype
        n = _col(self.normal, dt)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = _dot(_col(self.point, dt) - o, n) / _dot(d, n)
        t = np.where(t > T_EPS, t, dt.type(np.inf))
        return np.broadcast_to(t, (_count(o, d),))

    def surface(self, p, d):
        dt = p.dtype
        rel = p - _col(self.point, dt)
        tex = self.texture
        s = 1.0 / self.tile
        u = _dot(rel, _col(self.u_axis * s, dt))
        v = _dot(rel, _col(self.v_axis * (s * tex.w / tex.h), dt))
        normal = np.broadcast_to(_col(self.normal, dt), p.shape)
        return normal, u, v, tex.w / self.tile

    def describe(self):
        return dict(type="plane", name=self.name, texture=self.texture.name, point=self.point, normal=self.normal,
                    u_axis=self.u_axis, v_axis=self.v_axis, tile_metres=self.tile)


class Box(Primitive):
    """Box with centre c, half extents h, rotated by `yaw` about +y. Each face shows a centred crop of the photo."""

    def __init__(self, name, texture, centre, half, yaw):
        super().__init__(name, texture)
        self.c = np.asarray(centre, float)
        self.h = np.asarray(half, float)
        self.yaw = float(yaw)
        cy, sy = math.cos(yaw), math.sin(yaw)
        self.R = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])  # columns: local axes in world
        self.density = min(texture.w, texture.h) / (2.0 * self.h.max())  # photo texels per metre

    def bounding_sphere(self):
        return self.c, float(np.linalg.norm(self.h))

    def intersect(self, o, d):
        return _subset_intersect(self, o, d, self._slab)

    def _slab(self, o, d):
        dt = d.dtype
        ol = _apply(self.R.T, o - _col(self.c, dt))
        dl = _apply(self.R.T, d)
        tnear = tfar = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):
                inv = 1.0 / dl[a]
                ha = dt.type(self.h[a])
                t1 = (-ha - ol[a]) * inv
                t2 = (ha - ol[a]) * inv
                lo = np.minimum(t1, t2)
                hi = np.maximum(t1, t2)
                tnear = lo if tnear is None else np.maximum(tnear, lo)
                tfar = hi if tfar is None else np.minimum(tfar, hi)
        hit = (tfar >= tnear) & (tnear > T_EPS)
        return np.where(hit, tnear, dt.type(np.inf))

    def surface(self, p, d):
        dt = p.dtype
        pl = _apply(self.R.T, p - _col(self.c, dt))
        q = pl / _col(self.h, dt)
        a0, a1, a2 = np.abs(q[0]), np.abs(q[1]), np.abs(q[2])
        is0 = (a0 >= a1) & (a0 >= a2)
        is1 = ~is0 & (a1 >= a2)
        is2 = ~is0 & ~is1
        s = np.sign(np.where(is0, q[0], np.where(is1, q[1], q[2]))).astype(dt)
        zero = np.zeros_like(s)
        nl = np.stack([np.where(is0, s, zero), np.where(is1, s, zero), np.where(is2, s, zero)])
        normal = _apply(self.R, nl)
        x, y, z = pl
        # horizontal / vertical face coordinates so that the side faces show the photo upright
        horiz = np.where(is0, -s * z, np.where(is2, s * x, x))
        vert = np.where(is1, z, -y)
        tex = self.texture
        dens = self.density
        u = dt.type(0.5) + horiz * dt.type(dens / tex.w)
        v = dt.type(0.5) + vert * dt.type(dens / tex.h)
        return normal, u, v, dens

    def describe(self):
        return dict(type="box", name=self.name, texture=self.texture.name, centre=self.c, half_extents=self.h,
                    yaw_degrees=math.degrees(self.yaw))


class Sphere(Primitive):
    """Sphere; the photo and its mirror image wrap once around the equator, poles at the top/bottom rows."""

    def __init__(self, name, texture, centre, radius):
        super().__init__(name, texture)
        self.c = np.asarray(centre, float)
        self.r = float(radius)

    def bounding_sphere(self):
        return self.c, self.r

    def intersect(self, o, d):
        dt = d.dtype
        oc = o - _col(self.c, dt)
        b = _dot(d, oc)
        cc = _dot(oc, oc) - dt.type(self.r * self.r)
        disc = b * b - cc
        with np.errstate(invalid="ignore"):
            t = -b - np.sqrt(disc)
        t = np.where((disc > 0) & (t > T_EPS), t, dt.type(np.inf))
        return np.broadcast_to(t, (_count(o, d),))

    def surface(self, p, d):
        dt = p.dtype
        n = (p - _col(self.c, dt)) * dt.type(1.0 / self.r)
        lon = np.arctan2(n[0], n[2])
        lat = np.arccos(np.clip(n[1], -1.0, 1.0))
        u = lon * dt.type(1.0 / math.pi) + dt.type(1.0)
        v = lat * dt.type(1.0 / math.pi)
        tex = self.texture
        dens = math.sqrt(tex.w * tex.h) / (math.pi * self.r)
        return n, u, v, dens

    def describe(self):
        return dict(type="sphere", name=self.name, texture=self.texture.name, centre=self.c, radius=self.r)


class Drum(Primitive):
    """Vertical capped cylinder standing on its base centre; the photo + mirror wrap once around the side."""

    def __init__(self, name, texture, base_centre, radius, height):
        super().__init__(name, texture)
        self.c = np.asarray(base_centre, float)
        self.r = float(radius)
        self.height = float(height)

    def bounding_sphere(self):
        return self.c + [0.0, self.height / 2, 0.0], math.hypot(self.r, self.height / 2)

    def intersect(self, o, d):
        return _subset_intersect(self, o, d, self._exact)

    def _exact(self, o, d):
        dt = d.dtype
        ox, oy, oz = o - _col(self.c, dt)
        dx, dy, dz = d
        r2 = dt.type(self.r * self.r)
        hgt = dt.type(self.height)
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        cc = ox * ox + oz * oz - r2
        disc = b * b - a * cc
        with np.errstate(invalid="ignore", divide="ignore"):
            ts = (-b - np.sqrt(disc)) / a
            ys = oy + ts * dy
            side = (disc > 0) & (ts > T_EPS) & (ys >= 0) & (ys <= hgt)
            tc = (hgt - oy) / dy
            xc = ox + tc * dx
            zc = oz + tc * dz
            cap = (tc > T_EPS) & (xc * xc + zc * zc <= r2)
        t = np.where(side, ts, dt.type(np.inf))
        return np.where(cap & (tc < t), tc, t)

    def surface(self, p, d):
        dt = p.dtype
        x, y, z = p - _col(self.c, dt)
        on_cap = y >= dt.type(self.height * (1 - 1e-5) - 1e-6)
        rho = np.sqrt(x * x + z * z)
        rho = np.where(rho > 0, rho, dt.type(1))
        zero = np.zeros_like(x)
        normal = np.stack([np.where(on_cap, zero, x / rho), on_cap.astype(dt), np.where(on_cap, zero, z / rho)])
        tex = self.texture
        u_side = np.arctan2(x, z) * dt.type(1.0 / math.pi) + dt.type(1.0)
        v_side = (dt.type(self.height) - y) * dt.type(1.0 / self.height)
        dens_cap = min(tex.w, tex.h) / (2 * self.r)
        u_cap = dt.type(0.5) + x * dt.type(dens_cap / tex.w)
        v_cap = dt.type(0.5) + z * dt.type(dens_cap / tex.h)
        u = np.where(on_cap, u_cap, u_side)
        v = np.where(on_cap, v_cap, v_side)
        dens = math.sqrt(tex.w / (math.pi * self.r) * tex.h / self.height)
        return normal, u, v, dens

    def describe(self):
        return dict(type="cylinder", name=self.name, texture=self.texture.name, base_centre=self.c,
                    radius=self.r, height=self.height)


class Backdrop(Primitive):
    """The inside of an infinite vertical cylinder of radius R around the origin (unlit)."""

    lit = False
    occluder = False

    def __init__(self, name, texture, radius, tile):
        super().__init__(name, texture)
        self.r = float(radius)
        # an even number of photo widths around the ring so that the mirrored tiling closes seamlessly
        k = max(1, round(2 * math.pi * self.r / (2 * tile)))
        self.tile = 2 * math.pi * self.r / (2 * k)

    def intersect(self, o, d):
        dt = d.dtype
        ox, oz = o[0], o[2]
        dx, dz = d[0], d[2]
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        cc = ox * ox + oz * oz - dt.type(self.r * self.r)
        disc = b * b - a * cc
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (-b + np.sqrt(disc)) / a
        t = np.where((disc > 0) & (t > T_EPS), t, dt.type(np.inf))
        return np.broadcast_to(t, (_count(o, d),))

    def surface(self, p, d):
        dt = p.dtype
        x, y, z = p
        inv_r = dt.type(1.0 / self.r)
        normal = np.stack([-x * inv_r, np.zeros_like(x), -z * inv_r])
        tex = self.texture
        u = np.arctan2(x, z) * dt.type(self.r / self.tile)
        v = -y * dt.type(tex.w / (self.tile * tex.h))
        return normal, u, v, tex.w / self.tile

    def describe(self):
        return dict(type="backdrop_cylinder", name=self.name, texture=self.texture.name, radius=self.r,
                    tile_metres=self.tile, lit=False)


class Scene:
    def __init__(self, prims, light_dir=LIGHT_DIR):
        self.prims = list(prims)
        self.light = np.asarray(light_dir, float)

    def intersect(self, o, d):
        """Nearest hit of rays o + t d ([3,1] or [3,N] each): (t [N], primitive index [N], -1 = miss)."""
        n = _count(o, d)
        best_t = np.full(n, np.inf, d.dtype)
        best_i = np.full(n, -1, np.int16)
        for k, prim in enumerate(self.prims):
            t = prim.intersect(o, d)
            closer = t < best_t
            best_t = np.where(closer, t, best_t)
            best_i = np.where(closer, np.int16(k), best_i)
        return best_t, best_i

    def _shadowed(self, p, skip):
        """Boolean [N]: is the light blocked at points p [3,N] (by an occluder other than primitive `skip`)."""
        dt = p.dtype
        L = _col(self.light, dt)
        px, py, pz = p
        blocked = np.zeros(p.shape[1], bool)
        for k, prim in enumerate(self.prims):
            if k == skip or not prim.occluder:
                continue
            c, rad = prim.bounding_sphere()
            vx = dt.type(c[0]) - px
            vy = dt.type(c[1]) - py
            vz = dt.type(c[2]) - pz
            tc = vx * L[0] + vy * L[1] + vz * L[2]
            dist2 = vx * vx + vy * vy + vz * vz - tc * tc
            cand = (tc > -rad) & (dist2 < dt.type(rad * rad * 1.0001)) & ~blocked
            idx = np.nonzero(cand)[0]
            if len(idx) == 0:
                continue
            t = prim.intersect(np.take(p, idx, axis=1), L)
            blocked[idx[np.isfinite(t)]] = True
        return blocked

    def shade(self, o, d, t, prim_idx, pixel_angle=None):
        """Radiance [3, N] of the hits o + t d.

        pixel_angle (radians per sample) selects the texture mip level; None samples the finest level.
        """
        dt = d.dtype
        out = np.zeros((3, d.shape[1]), dt)
        L = _col(self.light, dt)
        for k, prim in enumerate(self.prims):
            idx = np.nonzero(prim_idx == k)[0]
            if len(idx) == 0:
                continue
            dk = np.take(d, idx, axis=1)
            tk = np.take(t, idx)
            p = _take(o, idx) + dk * tk
            normal, u, v, dens = prim.surface(p, dk)
            if pixel_angle is None:
                albedo = prim.texture.sample(u, v)
            else:
                cos = np.abs(_dot(dk, normal))
                footprint = tk * (dens * pixel_angle) if np.ndim(dens) else tk * dt.type(dens * pixel_angle)
                # between the minor and the major axis of the (anisotropic) footprint on the surface
                lod = np.log2(np.maximum(footprint, dt.type(1e-6)) / np.sqrt(np.maximum(cos, dt.type(0.05))))
                albedo = prim.texture.sample(u, v, lod)
            if prim.lit:
                ndl = np.maximum(_dot(normal, L), dt.type(0))
                li = np.nonzero(ndl > 0)[0]
                if len(li):
                    ps = np.take(p, li, axis=1) + np.take(normal, li, axis=1) * dt.type(1e-4)
                    ndl[li[self._shadowed(ps, k)]] = 0
                shade = dt.type(AMBIENT) + dt.type(DIFFUSE) * ndl
            else:
                shade = np.full(len(idx), BACKDROP_SHADE, dt)
            for c in range(3):
                np.put(out[c], idx, albedo[c] * shade)
        return out


# ---------------------------------------------------------------------------------------------
# scene layout and cameras


def _place(rng, items, margin=0.12, tries=2000):
    """Rejection-sample non-overlapping ground footprints. items: [(radius, region(rng) -> (x, z))]."""
    placed = []
    for rad, region in items:
        for _ in range(tries):
            x, z = region(rng)
            if all(math.hypot(x - px, z - pz) > rad + pr + margin for (px, pz, pr) in placed):
                break
        placed.append((x, z, rad))
    return [(x, z) for x, z, _ in placed]


def build_scene(kind, seed):
    rng = np.random.default_rng([int(seed), 1])
    jit = lambda: float(rng.uniform(0.85, 1.15))  # noqa: E731
    half_a = 0.32 * jit()
    half_c = np.array([0.42, 0.22, 0.30]) * jit()
    half_r = np.array([0.20, 0.55, 0.20]) * jit()
    r_cat = 0.32 * jit()
    r_cam = 0.22 * jit()
    r_drum, h_drum = 0.30 * jit(), 0.42 * jit()
    radii = [half_r[[0, 2]].max() * 1.42, half_a * 1.42, np.linalg.norm(half_c[[0, 2]]), r_cat, r_cam, r_drum]
    if kind == "llff":
        def region(rng_):  # inside the view frustum of the camera grid
            z = float(rng_.uniform(-1.9, 0.4))
            return float(rng_.uniform(-1.0, 1.0)) * (1.0 + 0.35 * (0.4 - z)), z

        def back(rng_):  # the tall box stands at the back
            return float(rng_.uniform(-0.9, 0.9)), float(rng_.uniform(-2.3, -1.7))

        yaw = lambda: float(rng.uniform(-0.7, 0.7))  # noqa: E731
    else:
        def region(rng_):
            a = rng_.uniform(0, 2 * math.pi)
            r = 1.45 * math.sqrt(rng_.uniform(0.0, 1.0))
            return float(r * math.sin(a)), float(r * math.cos(a))

        back = region
        yaw = lambda: float(rng.uniform(0, math.pi / 2))  # noqa: E731
    pos = _place(rng, [(radii[0], back)] + [(r, region) for r in radii[1:]])
    float_y = float(rng.uniform(0.25, 0.55))
    tx = load_texture
    prims = [
        Box("tall_box", tx("rocket"), [pos[0][0], half_r[1], pos[0][1]], half_r, yaw()),
        Box("cube", tx("astronaut"), [pos[1][0], half_a, pos[1][1]], [half_a] * 3, yaw()),
        Box("low_box", tx("coffee"), [pos[2][0], half_c[1], pos[2][1]], half_c, yaw()),
        Sphere("sphere", tx("chelsea"), [pos[3][0], r_cat, pos[3][1]], r_cat),
        Sphere("floating_sphere", tx("camera"), [pos[4][0], r_cam + float_y, pos[4][1]], r_cam),
        Drum("drum", tx("text"), [pos[5][0], 0.0, pos[5][1]], r_drum, h_drum),
    ]
    if kind == "llff":
        prims.append(Plane("ground", tx("gravel"), [0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], tile=1.6))
        prims.append(Plane("back_wall", tx("brick"), [0, 0, -3.0], [0, 0, 1], [1, 0, 0], [0, -1, 0], tile=2.4))
    else:
        prims.append(Plane("ground", tx("grass"), [0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], tile=1.6))
        prims.append(Backdrop("backdrop", tx("brick"), radius=10.0, tile=4.0))
    return Scene(prims)


def look_at(centre, target, up=(0.0, 1.0, 0.0)):
    """World-to-camera (R, t) for a camera at `centre` looking at `target` (OpenCV axes)."""
    centre = np.asarray(centre, float)
    f = np.asarray(target, float) - centre
    f /= np.linalg.norm(f)
    x = np.cross(f, up)
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    R = np.stack([x, y, f])  # rows: camera axes in world coordinates
    return R, -R @ centre


def build_cameras(kind, views, seed):
    """List of (R_w2c, t_w2c, centre) per view, deterministic per seed."""
    rng = np.random.default_rng([int(seed), 2])
    cams = []
    if kind == "llff":
        cols = max(1, int(math.ceil(math.sqrt(views * 1.5))))
        rows = int(math.ceil(views / cols))
        target = np.array([0.0, 0.4, -0.8]) + rng.uniform(-0.05, 0.05, 3)
        for i in range(views):
            r, c = divmod(i, cols)
            gx = (c / max(cols - 1, 1) - 0.5) * 1.2
            gy = (0.5 - r / max(rows - 1, 1)) * 0.45 if rows > 1 else 0.0
            centre = np.array([gx, 1.2 + gy, 2.6]) + rng.uniform(-1, 1, 3) * [0.05, 0.04, 0.1]
            tgt = target + rng.uniform(-1, 1, 3) * 0.05
            R, t = look_at(centre, tgt)
            cams.append((R, t, centre))
    else:
        phase = rng.uniform(0, 2 * math.pi)
        for i in range(views):
            a = phase + 2 * math.pi * i / views + rng.uniform(-0.3, 0.3) * math.pi / views
            rad = 3.6 + rng.uniform(-0.15, 0.15)
            height = 1.35 + 0.2 * math.sin(3 * a) + rng.uniform(-0.05, 0.05)
            centre = np.array([rad * math.sin(a), height, rad * math.cos(a)])
            tgt = np.array([0.0, 0.4, 0.0]) + rng.uniform(-1, 1, 3) * 0.05
            R, t = look_at(centre, tgt)
            cams.append((R, t, centre))
    return cams


# ---------------------------------------------------------------------------------------------
# rendering


def _render_rows(scene, R, centre, fx, fy, cx, cy, width, r0, r1):
    """Float RGB [r1 - r0, W, 3] of pixel rows r0..r1, SUPERSAMPLE^2 rays per pixel (box filter)."""
    dt = RENDER_DTYPE
    ss = SUPERSAMPLE
    offs = (np.arange(ss) + 0.5) / ss
    vs = (np.arange(r0, r1)[:, None] + offs[None, :]).reshape(-1)
    us = (np.arange(width)[:, None] + offs[None, :]).reshape(-1)
    xc = ((us - cx) / fx).astype(dt)[None, :]
    yc = ((vs - cy) / fy).astype(dt)[:, None]
    n = len(vs) * len(us)
    d = np.empty((3, n), dt)
    for i in range(3):  # world direction = R^T (xc, yc, 1)
        d[i] = (xc * dt.type(R[0, i]) + (yc * dt.type(R[1, i]) + dt.type(R[2, i]))).reshape(-1)
    d *= 1.0 / np.sqrt(_dot(d, d))
    o = _col(centre, dt)
    t, idx = scene.intersect(o, d)
    col = scene.shade(o, d, t, idx, pixel_angle=1.0 / (fx * ss))
    col = col.reshape(3, r1 - r0, ss, width, ss)
    acc = None
    for i in range(ss):
        for j in range(ss):
            acc = col[:, :, i, :, j] if acc is None else acc + col[:, :, i, :, j]
    return (acc * dt.type(1.0 / (ss * ss))).transpose(1, 2, 0)


def render_view(scene, R, centre, fx, fy, cx, cy, width, height, pool=None):
    """Ray cast one view; returns uint8 [H, W, 3] (RGB)."""
    rows_per_chunk = max(1, CHUNK_RAYS // (width * SUPERSAMPLE * SUPERSAMPLE))
    spans = [(r, min(height, r + rows_per_chunk)) for r in range(0, height, rows_per_chunk)]
    job = lambda s: _render_rows(scene, R, centre, fx, fy, cx, cy, width, *s)  # noqa: E731
    parts = list(pool.map(job, spans)) if pool is not None else [job(s) for s in spans]
    img = np.concatenate(parts, axis=0)
    return np.clip(np.floor(img * 255.0 + 0.5), 0, 255).astype(np.uint8)


def area_downsamples(img, factors=DOWNSCALES):
    """{f: exact area average of a uint8 image over f x f blocks, rounded half up} for powers of two f."""
    h, w = img.shape[:2]
    out = {}
    acc = img.astype(np.uint32)
    f = 1
    while f < max(factors):
        acc = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]  # block sums
        f *= 2
        if f in factors:
            n = f * f
            out[f] = ((acc + n // 2) // n).astype(np.uint8)
    assert all(out[f].shape[:2] == (h // f, w // f) for f in factors)
    return out


# ---------------------------------------------------------------------------------------------
# sparse points


def sample_points(scene, cams, intr, width, height, num_points, seed):
    """Points on surfaces seen by the cameras, their colour and COLMAP tracks.

    Returns xyz [P, 3], rgb [P, 3] uint8, visibility [P, V] bool and projections [P, V, 2] (pixels).
    """
    fx, fy, cx, cy = intr
    rng = np.random.default_rng([int(seed), 3])
    nv = len(cams)
    m = int(num_points * 1.6) + 8 * nv
    view = np.arange(m) % nv
    u = rng.uniform(0, width, m)
    v = rng.uniform(0, height, m)
    xyz = np.zeros((m, 3))
    for j in range(nv):
        sel = np.nonzero(view == j)[0]
        R, _, centre = cams[j]
        dcam = np.stack([(u[sel] - cx) / fx, (v[sel] - cy) / fy, np.ones(len(sel))], 1)
        d = dcam @ R
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        t, _ = scene.intersect(centre.reshape(3, 1), np.ascontiguousarray(d.T))
        xyz[sel] = centre + d * t[:, None]
    # drop anything not hit (cannot happen with the closed scenes, but stay safe)
    ok = np.isfinite(xyz).all(1)
    xyz = xyz[ok]
    # visibility of every point in every view
    vis = np.zeros((len(xyz), nv), bool)
    proj = np.zeros((len(xyz), nv, 2))
    for j, (R, tvec, centre) in enumerate(cams):
        pc = xyz @ R.T + tvec
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            px = fx * pc[:, 0] / z + cx
            py = fy * pc[:, 1] / z + cy
        inside = (z > 1e-3) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
        idx = np.nonzero(inside)[0]
        if len(idx) == 0:
            continue
        vec = xyz[idx] - centre
        dist = np.linalg.norm(vec, axis=1)
        t, _ = scene.intersect(centre.reshape(3, 1), np.ascontiguousarray((vec / dist[:, None]).T))
        seen = t >= dist * (1 - 1e-6) - 1e-6 * (1 + dist)
        vis[idx[seen], j] = True
        proj[idx, j, 0] = px[idx]
        proj[idx, j, 1] = py[idx]
    keep = np.nonzero(vis.sum(1) >= 2)[0][:num_points]
    xyz = xyz[keep]
    vis = vis[keep]
    proj = proj[keep]
    # colour: the surface radiance at the point, with the texture filtered over one full-resolution pixel
    # of the first view that sees it (what that image shows there, without the supersampling box filter)
    first = vis.argmax(1)
    rgb = np.zeros((len(xyz), 3))
    for j in range(nv):
        sel = np.nonzero(first == j)[0]
        if len(sel) == 0:
            continue
        centre = cams[j][2]
        vec = xyz[sel] - centre
        d = np.ascontiguousarray((vec / np.linalg.norm(vec, axis=1, keepdims=True)).T)
        t, pid = scene.intersect(centre.reshape(3, 1), d)
        rgb[sel] = scene.shade(centre.reshape(3, 1), d, t, pid, pixel_angle=1.0 / fx).T
    rgb8 = np.clip(np.floor(rgb * 255 + 0.5), 0, 255).astype(np.uint8)
    return xyz, rgb8, vis, proj


# ---------------------------------------------------------------------------------------------
# output folder handling


def _check_out_dir(out_dir, force):
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise SceneArgumentError(f"output path {out_dir} exists and is not a directory; choose another --out")
        if os.listdir(out_dir):
            if not force:
                raise SceneArgumentError(
                    f"output folder {out_dir} exists and is not empty; choose another --out or pass --force "
                    f"to replace it")
            cwd = os.path.abspath(os.getcwd())
            if cwd == out_dir or cwd.startswith(out_dir.rstrip(os.sep) + os.sep) or out_dir == _REPO_ROOT:
                raise SceneArgumentError(f"refusing to replace {out_dir}: it contains the working directory or "
                                         f"the repository; choose another --out")
    return out_dir


def _validate(views, width, height, kind, seed, num_points):
    for name, val in (("views", views), ("width", width), ("height", height), ("seed", seed),
                      ("num_points", num_points)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise SceneArgumentError(f"{name} must be an integer, got {val!r}")
    if kind not in KINDS:
        raise SceneArgumentError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if views < 2:
        raise SceneArgumentError(f"views must be at least 2 (points need two views), got {views}")
    f = max(DOWNSCALES)
    for name, val in (("width", width), ("height", height)):
        if val < 2 * f or val % f:
            raise SceneArgumentError(
                f"{name} must be a positive multiple of {f} and at least {2 * f} (so images_{f} is an exact "
                f"1/{f} area downsample), got {val}; e.g. --width 960 --height 720")
    if seed < 0:
        raise SceneArgumentError(f"seed must be >= 0, got {seed}")
    if num_points < 0:
        raise SceneArgumentError(f"num_points must be >= 0, got {num_points}")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (float, np.floating)):
        return round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_png(path, rgb):
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"could not write {path}")


def make_scene(out_dir, views=24, width=960, height=720, kind="llff", seed=0, num_points=5000, force=False,
               progress=True, workers=None):
    """Generate the synthetic scene into out_dir (see the module docstring). Returns the metadata dict.

    Raises SceneArgumentError (a SceneFormatError and a ValueError) for bad arguments or an existing,
    non-empty out_dir without force.
    """
    kind = str(kind)
    _validate(views, width, height, kind, seed, num_points)
    out_dir = _check_out_dir(out_dir, force)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)

    scene = build_scene(kind, seed)
    cams = build_cameras(kind, views, seed)
    fx = fy = FOCAL_OVER_WIDTH * width
    cx, cy = width / 2.0, height / 2.0
    pad = max(3, len(str(views - 1)))
    names = [f"view_{i:0{pad}d}.png" for i in range(views)]

    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise SceneArgumentError(f"cannot write the scene beside {out_dir} ({exc.strerror}); "
                                 f"choose a writable --out") from None
    try:
        dirs = {1: os.path.join(tmp, "images")}
        dirs.update({f: os.path.join(tmp, f"images_{f}") for f in DOWNSCALES})
        for p in dirs.values():
            os.makedirs(p)
        pool = ThreadPoolExecutor(workers) if workers > 1 else None
        try:
            with tqdm(total=views, desc=f"make_scene {kind}", unit="view", disable=not progress) as bar:
                for name, (R, _, centre) in zip(names, cams):
                    img = render_view(scene, R, centre, fx, fy, cx, cy, width, height, pool)
                    _write_png(os.path.join(dirs[1], name), img)
                    for f, small in area_downsamples(img).items():
                        _write_png(os.path.join(dirs[f], name), small)
                    bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown()

        xyz, rgb, vis, proj = sample_points(scene, cams, (fx, fy, cx, cy), width, height, num_points, seed)
        _write_sparse(os.path.join(tmp, "sparse", "0"), cams, names, (fx, fy, cx, cy), width, height,
                      xyz, rgb, vis, proj)

        meta = _meta(scene, cams, names, kind, seed, views, width, height, (fx, fy, cx, cy), len(xyz))
        with open(os.path.join(tmp, "scene_meta.json"), "w") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
            fh.write("\n")

        _apply_umask(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _apply_umask(root):
    """Give the scene the usual permissions (mkdtemp / atomic writes create private 0700 / 0600 entries)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for base, dirnames, filenames in os.walk(root):
        for n in dirnames:
            os.chmod(os.path.join(base, n), 0o777 & ~umask)
        for n in filenames:
            os.chmod(os.path.join(base, n), 0o666 & ~umask)


def _move_into_place(tmp, out_dir):
    if os.path.isdir(out_dir):
        if not os.listdir(out_dir):
            os.rmdir(out_dir)
            os.rename(tmp, out_dir)
            return
        old = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".", suffix=".old",
                               dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _write_sparse(sparse_dir, cams, names, intr, width, height, xyz, rgb, vis, proj):
    from scene.colmap_io import ColmapCamera, ColmapImage, ColmapPoints, rotmat_to_qvec, write_model

    cameras = {1: ColmapCamera(1, "PINHOLE", width, height, np.array(intr, float))}
    nv = len(cams)
    # 2D observations per image, in point order; tracks point back at them
    obs_pt, obs_view = np.nonzero(vis)  # sorted by point, then view
    order = np.lexsort((obs_pt, obs_view))  # group by view, points ascending within a view
    idx_in_image = np.empty(len(obs_pt), np.int64)
    counts = np.bincount(obs_view, minlength=nv)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx_in_image[order] = np.arange(len(order)) - np.repeat(starts, counts)
    images = {}
    for j, ((R, t, _), name) in enumerate(zip(cams, names)):
        sel = order[starts[j]:starts[j] + counts[j]]
        images[j + 1] = ColmapImage(j + 1, rotmat_to_qvec(R), t, 1, name,
                                    proj[obs_pt[sel], obs_view[sel]], obs_pt[sel].astype(np.int64) + 1)
    track_flat = np.stack([obs_view + 1, idx_in_image], 1).astype(np.int32)
    per_point = np.bincount(obs_pt, minlength=len(xyz))
    tracks = np.split(track_flat, np.cumsum(per_point)[:-1]) if len(xyz) else []
    points = ColmapPoints(np.arange(1, len(xyz) + 1), xyz, rgb, np.zeros(len(xyz)), tracks)
    write_model(sparse_dir, cameras, images, points, ext=".bin")


def _meta(scene, cams, names, kind, seed, views, width, height, intr, num_points):
    fx, fy, cx, cy = intr
    used = sorted({p.texture.name for p in scene.prims})
    return _jsonable(dict(
        generator="tools/make_scene.py",
        generator_version=GENERATOR_VERSION,
        kind=kind,
        seed=seed,
        views=views,
        width=width,
        height=height,
        size=[width, height],
        downscales=list(DOWNSCALES),
        downsampling="exact area average of images/ (round half up)",
        supersample=SUPERSAMPLE,
        num_points=num_points,
        image_names=names,
        llffhold=8,
        camera=dict(model="PINHOLE", fx=fx, fy=fy, cx=cx, cy=cy,
                    convention="COLMAP pixel centres at +0.5; world-to-camera poses, OpenCV axes"),
        camera_centres=[c for (_, _, c) in cams],
        world="metres, +y up, ground plane y = 0",
        lighting=dict(model="Lambertian, view-independent", direction_to_light=scene.light, ambient=AMBIENT,
                      diffuse=DIFFUSE, shadows="hard, cast by the boxes, spheres and cylinder",
                      backdrop="unlit, constant shade %.2f" % BACKDROP_SHADE),
        background=("infinite textured back wall and ground" if kind == "llff" else
                    "textured ground and a textured cylindrical backdrop (radius 10 m), no empty background"),
        objects=[p.describe() for p in scene.prims],
        textures={n: dict(source=f"scikit-image skimage.data.{n}()", origin=TEXTURES[n]["origin"],
                          licence=TEXTURES[n]["licence"], tint=TEXTURES[n].get("tint"))
                  for n in used},
    ))


# ---------------------------------------------------------------------------------------------
# CLI


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output scene folder (must not exist or be empty)")
    p.add_argument("--views", type=int, default=24, help="number of views (default 24)")
    p.add_argument("--width", type=int, default=960, help="full-resolution width, a multiple of 8 (default 960)")
    p.add_argument("--height", type=int, default=720, help="full-resolution height, a multiple of 8 (default 720)")
    p.add_argument("--kind", choices=KINDS, default="llff", help="camera layout (default llff)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--points", type=int, default=5000, help="number of sparse 3D points (default 5000)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    start = time.time()
    meta = make_scene(args.out, views=args.views, width=args.width, height=args.height, kind=args.kind,
                      seed=args.seed, num_points=args.points, force=args.force, progress=not args.quiet)
    print(f"wrote {os.path.abspath(args.out)}: {meta['views']} views {meta['width']}x{meta['height']} "
          f"(+ images_{'/'.join(str(f) for f in DOWNSCALES)}), {meta['num_points']} points, "
          f"kind {meta['kind']}, seed {meta['seed']} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(run_cli(main))
