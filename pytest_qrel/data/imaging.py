"""Image-processing primitives of ImageNet-C's generator, re-implemented in numpy / scipy.

Hendrycks & Dietterich's generator (``make_imagenet_c.py`` of github.com/hendrycks/robustness)
calls OpenCV (``cv2``) and ImageMagick (through Wand) for some corruptions. pytest-qrel depends on
neither: the few operations it needs are written here from the libraries' documented behaviour
(and their source, read for the integer details), each checked against the real library in
``tests/test_shifts.py`` where OpenCV / Wand are importable, and against an independent formula
otherwise. Conventions: images are numpy arrays, ``(H, W)`` or ``(H, W, C)``; "reflect 101" is
OpenCV's default border (``d c b | a b c d | c b a``, scipy's ``mode="mirror"``).

=========================  ===========================================================
function                   what it reproduces
=========================  ===========================================================
:func:`gaussian_kernel1d`  ``cv2.getGaussianKernel`` (sigma > 0)
:func:`disk_kernel`        ImageNet-C's anti-aliased disk (defocus blur)
:func:`motion_blur`        ImageMagick's ``MotionBlurImage`` (one-sided Gaussian along a line)
:func:`magick_to_8bit`     ImageMagick Q16's 16-bit rounding then 8-bit PNG output
:func:`clipped_zoom`       ImageNet-C's centre zoom (scipy ``zoom``, order 1)
:func:`plasma_fractal`     ImageNet-C's diamond-square height map (fog)
:func:`canny`              ``cv2.Canny`` (3 x 3 Sobel, L1 gradient, hysteresis)
:func:`chamfer_distance`   ``cv2.distanceTransform(..., DIST_L2, 5)`` (5 x 5 chamfer, float32)
:func:`box_blur`           ``cv2.blur`` with a 3 x 3 box
:func:`equalize_hist`      ``cv2.equalizeHist``
:func:`filter2d_u8`        ``cv2.filter2D(u8, CV_8U, integer kernel)``
:func:`affine_from_points` ``cv2.getAffineTransform``
:func:`warp_affine`        ``cv2.warpAffine`` (bilinear, reflect 101, 1/32-pixel fixed point)
:func:`rgb_to_grey`        ``cv2.cvtColor(RGB2GRAY)`` on float images
=========================  ===========================================================
"""

from __future__ import annotations

import math

import numpy as np

# ------------------------------------------------------------------------------------ blur kernels


def gaussian_kernel1d(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV's 1-D Gaussian of ``ksize`` taps (sigma > 0): ``exp(-(i - (ksize-1)/2)^2 / 2 sigma^2)``,
    normalised to sum 1, as float32 (the kernel type OpenCV uses for a float32 image)."""
    i = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    k = np.exp(-0.5 / (sigma * sigma) * i * i)
    return (k / k.sum()).astype(np.float32)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: the pixels within ``radius`` of the centre (a 17 x 17 grid for
    radius <= 8, else ``2 radius + 1``), normalised, then blurred by a Gaussian of ``alias_blur``
    (3 x 3 taps, 5 x 5 above radius 8) with OpenCV's reflect-101 border. float32."""
    from scipy.ndimage import correlate1d

    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= np.sum(disk)
    g = gaussian_kernel1d(ksize, alias_blur)
    out = correlate1d(disk, g, axis=1, mode="mirror")
    return correlate1d(out, g, axis=0, mode="mirror").astype(np.float32)


# ------------------------------------------------------------------------------- ImageMagick blur


def motion_offsets(radius: float, sigma: float, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weights, dx, dy)`` of ImageMagick's motion blur: ``2 ceil(radius) + 1`` taps of a one-sided
    Gaussian ``exp(-i^2 / 2 sigma^2)`` (normalised), tap ``i`` at ``ceil(i cos(angle) - 0.5)``
    columns and ``ceil(i sin(angle) - 0.5)`` rows from the pixel (``angle`` in degrees)."""
    width = int(2.0 * math.ceil(radius) + 1.0) if radius > 1e-12 else 3
    i = np.arange(width, dtype=np.float64)
    s = sigma if abs(sigma) >= 1e-12 else 1e-12
    weights = np.exp(-(i * i) / (2.0 * s * s)) / (math.sqrt(2.0 * math.pi) * s)
    weights /= weights.sum()
    px = width * math.sin(math.radians(angle))
    py = width * math.cos(math.radians(angle))
    norm = math.hypot(px, py)
    dx = np.ceil(i * py / norm - 0.5).astype(np.int64)
    dy = np.ceil(i * px / norm - 0.5).astype(np.int64)
    return weights, dx, dy


def motion_blur(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` on ``image`` (H, W) or (H, W, C), in
    float64 and in the image's own units: ``out(y, x) = sum_i w_i image(y + dy_i, x + dx_i)`` with
    pixels outside the image taken from the nearest edge (ImageMagick's default virtual pixels)."""
    weights, dx, dy = motion_offsets(radius, sigma, angle)
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[:2]
    pad = int(max(np.abs(dx).max(), np.abs(dy).max()))
    widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (img.ndim - 2)
    padded = np.pad(img, widths, mode="edge")
    out = np.zeros_like(img)
    for k, ox, oy in zip(weights, dx, dy):
        out += k * padded[pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return out


def magick_to_8bit(value: np.ndarray) -> np.ndarray:
    """What ImageMagick (6.9, Q16, as Debian ships it) writes to an 8-bit PNG for a filter result
    ``value`` computed on 8-bit input (units 0..255): rounded to 16 bits (``ClampToQuantum`` of
    ``257 value``), then the 16-bit value divided by 257 and truncated. uint8. (Measured against
    Wand: every pixel of random images equal; plain rounding of ``value`` differs on half of them.)"""
    q = np.clip(np.floor(np.asarray(value, dtype=np.float64) * 257.0 + 0.5), 0, 65535).astype(np.int64)
    return (q // 257).astype(np.uint8)


# ------------------------------------------------------------------------------- zoom and plasma


def clipped_zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """ImageNet-C's ``clipped_zoom`` on (H, W, C): the centre ``ceil(H / factor)`` x ``ceil(W /
    factor)`` crop zoomed by ``factor`` (scipy, bilinear) and its centre H x W kept. The reference
    assumes a square image (it uses H for both sides); this is the same on square images."""
    from scipy.ndimage import zoom

    h, w = image.shape[:2]
    ch, cw = int(np.ceil(h / float(factor))), int(np.ceil(w / float(factor)))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = zoom(image[top : top + ch, left : left + cw], (factor, factor, 1), order=1)
    trim_top, trim_left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[trim_top : trim_top + h, trim_left : trim_left + w]


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's diamond-square height map (``mapsize`` a power of two), in [0, 1].

    Starting from a zero corner with noise amplitude 100, each level fills square centres then
    diamond centres with the mean of their four neighbours (wrapping around) plus uniform noise,
    and divides the amplitude by ``wibbledecay``. Draws from ``rng.uniform`` in the reference's
    order (squares, then the two diamond grids)."""
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two >= 2, got {mapsize}")
    grid = np.empty((mapsize, mapsize), dtype=np.float64)
    grid[0, 0] = 0.0
    step = mapsize
    amp = 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + amp * rng.uniform(-amp, amp, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        grid[half:mapsize:step, half:mapsize:step] = noisy_mean(square)
        centres = grid[half:mapsize:step, half:mapsize:step]
        corners = grid[0:mapsize:step, 0:mapsize:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:mapsize:step, half:mapsize:step] = noisy_mean(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:mapsize:step, 0:mapsize:step] = noisy_mean(top)
        step //= 2
        amp /= wibbledecay
    grid -= grid.min()
    return grid / grid.max()


# ------------------------------------------------------------------------------- OpenCV's pieces


def _reflect101(index: np.ndarray, n: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 index map (any offset, n >= 1)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    i = np.mod(index, period)
    return np.where(i >= n, period - i, i)


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3 x 3 Sobel derivatives (int64) with replicated borders, as ``cv2.Canny`` computes them."""
    p = np.pad(img.astype(np.int64), 1, mode="edge")
    smooth_y = p[:-2] + 2 * p[1:-1] + p[2:]  # [1 2 1] down the rows
    dx = smooth_y[:, 2:] - smooth_y[:, :-2]
    smooth_x = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    dy = smooth_x[2:] - smooth_x[:-2]
    return dx, dy


TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)  # tan(22.5 deg) in Q15, OpenCV's constant


def canny(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """``cv2.Canny(img, low, high)`` (aperture 3, L1 gradient) on a uint8 (H, W) image: 255 on edges.

    Non-maximum suppression along the gradient quantised to 0 / 45 / 90 / 135 degrees with
    OpenCV's integer sector test and its tie rules (``>`` on one side, ``>=`` on the other for
    the axes, ``>`` on both for diagonals; magnitudes outside the image count 0); a pixel above
    ``high`` is an edge, one above ``low`` is an edge when 8-connected to an edge."""
    from scipy.ndimage import label

    dx, dy = _sobel(img)
    mag = np.abs(dx) + np.abs(dy)
    lo, hi = math.floor(low), math.floor(high)
    h, w = mag.shape
    m = np.pad(mag, 1)  # zeros around

    def at(oy: int, ox: int) -> np.ndarray:
        return m[1 + oy : 1 + oy + h, 1 + ox : 1 + ox + w]

    ax = np.abs(dx)
    ay = np.abs(dy) << 15
    tg22x = ax * TG22
    tg67x = tg22x + (ax << 16)
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    diagonal = ~horizontal & ~vertical
    same_sign = (dx ^ dy) >= 0  # s = 1: previous row at j - 1, next row at j + 1
    keep = np.where(horizontal, (mag > at(0, -1)) & (mag >= at(0, 1)), False)
    keep |= vertical & (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep |= diagonal & same_sign & (mag > at(-1, -1)) & (mag > at(1, 1))
    keep |= diagonal & ~same_sign & (mag > at(-1, 1)) & (mag > at(1, -1))
    candidate = keep & (mag > lo)
    strong = candidate & (mag > hi)
    labels, n = label(candidate, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((h, w), dtype=np.uint8)
    linked = np.zeros(n + 1, dtype=bool)
    linked[np.unique(labels[strong])] = True
    linked[0] = False
    return np.where(linked[labels], 255, 0).astype(np.uint8)


_CHAMFER = tuple(float(np.float32(v)) for v in (1.0, 1.4, 2.1969))  # horizontal / vertical, diagonal, knight's move
_UPPER = ((-2, -1, 2), (-2, 1, 2), (-1, -2, 2), (-1, -1, 1), (-1, 0, 0), (-1, 1, 1), (-1, 2, 2))  # (dy, dx, step)


def chamfer_distance(img: np.ndarray) -> np.ndarray:
    """``cv2.distanceTransform(img, DIST_L2, 5)``: for every pixel the 5 x 5 chamfer distance (steps
    1, 1.4 and 2.1969) to the nearest zero pixel of ``img``; float32.

    Two raster passes in float32 arithmetic, as the OpenCV wheels compute it (their IPP path;
    OpenCV built without IPP sums the same steps in 16-bit fixed point, within 2e-5 of this). The
    rows above (below) are vectorised; the left (right) neighbour is sequential, through a
    float32 ``array`` so that every sum is rounded as OpenCV's is."""
    from array import array

    h, w = img.shape
    far = np.float32(3.0e38)
    d = np.full((h + 4, w + 4), far, dtype=np.float32)
    zero = img == 0
    steps = [np.float32(v) for v in _CHAMFER]
    hv = _CHAMFER[0]
    for sign, rows in ((1, range(h)), (-1, range(h - 1, -1, -1))):
        for i in rows:
            r = i + 2
            cands = [d[r, 2 : w + 2]] if sign < 0 else []
            cands += [d[r + sign * dy, 2 + sign * dx : w + 2 + sign * dx] + steps[k] for dy, dx, k in _UPPER]
            t = np.minimum.reduce(cands)
            t[zero[i]] = 0
            row = array("f", t.tobytes())
            order = range(1, w) if sign > 0 else range(w - 2, -1, -1)
            for j in order:
                v = row[j - sign] + hv
                row[j] = min(row[j], v)
            d[r, 2 : w + 2] = np.frombuffer(row, dtype=np.float32)
    return d[2 : h + 2, 2 : w + 2].copy()


def box_blur(img: np.ndarray) -> np.ndarray:
    """``cv2.blur(img, (3, 3))`` with reflect-101 borders: the 3 x 3 mean, as float32 for a float
    image and rounded to the nearest integer for a uint8 image (a sum over 9 never ties)."""
    from scipy.ndimage import correlate

    total = correlate(img.astype(np.float64), np.ones((3, 3)), mode="mirror")  # exact sums
    if img.dtype == np.uint8:
        return np.clip(np.rint(total / 9.0), 0, 255).astype(np.uint8)
    return (total * (1.0 / 9.0)).astype(np.float32)


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """``cv2.equalizeHist`` on uint8: the cumulative histogram after the first occupied level,
    scaled by ``255 / (N - count of that level)`` in float32 and rounded (half to even)."""
    hist = np.bincount(img.ravel(), minlength=256).astype(np.int64)
    first = int(np.flatnonzero(hist)[0])
    total = img.size
    if hist[first] == total:
        return np.full_like(img, first)
    scale = np.float32(255.0) / np.float32(total - hist[first])
    lut = np.zeros(256, dtype=np.uint8)
    cum = np.cumsum(hist[first + 1 :])
    lut[first + 1 :] = np.clip(np.rint(cum.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return lut[img]


def filter2d_u8(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.filter2D(img, cv2.CV_8U, kernel)`` for an integer kernel: correlation (not
    convolution) about the kernel's centre, reflect-101 borders, saturated to 0..255."""
    from scipy.ndimage import correlate

    out = correlate(img.astype(np.int64), np.asarray(kernel, dtype=np.int64), mode="mirror")
    return np.clip(out, 0, 255).astype(np.uint8)


def rgb_to_grey(img: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(img, COLOR_RGB2GRAY)`` for a float32 (H, W, 3) image: 0.299 R + 0.587 G + 0.114 B."""
    img = img.astype(np.float32)
    return img[..., 0] * np.float32(0.299) + img[..., 1] * np.float32(0.587) + img[..., 2] * np.float32(0.114)


# --------------------------------------------------------------------------------- affine warps

_AB_BITS, _INTER_BITS = 10, 5
_AB_SCALE, _TAB = 1 << _AB_BITS, 1 << _INTER_BITS


def affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``cv2.getAffineTransform``: the 2 x 3 matrix ``M`` (float64) with ``M @ [x, y, 1] = dst`` for the
    three ``src`` points (each row ``(x, y)``)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        a[2 * i, 0:2], a[2 * i, 2] = src[i], 1.0
        a[2 * i + 1, 3:5], a[2 * i + 1, 5] = src[i], 1.0
        b[2 * i], b[2 * i + 1] = dst[i]
    return np.linalg.solve(a, b).reshape(2, 3)


def _cv_round(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int64)  # cvRound: to nearest, ties to even


def warp_affine(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``cv2.warpAffine(img, matrix, (W, H), borderMode=BORDER_REFLECT_101)`` (bilinear) on a float32
    (H, W, C) image: ``out(x, y) = img(M^-1 (x, y))``.

    OpenCV's fixed point is reproduced: the inverse map is evaluated in 1/1024 pixel steps and
    rounded to 1/32 pixel; the four taps are weighted by the float32 products of ``(1 - f, f)`` at
    that 1/32 grid; taps outside the image are reflected (reflect 101)."""
    m = np.asarray(matrix, dtype=np.float64)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[1, 1] * det, m[0, 0] * det
    a12, a21 = -m[0, 1] * det, -m[1, 0] * det
    b1 = -a11 * m[0, 2] - a12 * m[1, 2]
    b2 = -a21 * m[0, 2] - a22 * m[1, 2]
    h, w = img.shape[:2]
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    round_delta = _AB_SCALE // _TAB // 2
    adelta = _cv_round(a11 * xs * _AB_SCALE)
    bdelta = _cv_round(a21 * xs * _AB_SCALE)
    x0 = _cv_round((a12 * ys + b1) * _AB_SCALE) + round_delta
    y0 = _cv_round((a22 * ys + b2) * _AB_SCALE) + round_delta
    gx = (x0[:, None] + adelta[None, :]) >> (_AB_BITS - _INTER_BITS)
    gy = (y0[:, None] + bdelta[None, :]) >> (_AB_BITS - _INTER_BITS)
    ix, fx = gx >> _INTER_BITS, gx & (_TAB - 1)
    iy, fy = gy >> _INTER_BITS, gy & (_TAB - 1)
    wx1 = (fx / np.float32(_TAB)).astype(np.float32)
    wy1 = (fy / np.float32(_TAB)).astype(np.float32)
    wx0, wy0 = np.float32(1.0) - wx1, np.float32(1.0) - wy1
    x_a, x_b = _reflect101(ix, w), _reflect101(ix + 1, w)
    y_a, y_b = _reflect101(iy, h), _reflect101(iy + 1, h)
    src = img.astype(np.float32)
    expand = (slice(None), slice(None)) + (None,) * (img.ndim - 2)
    out = (src[y_a, x_a] * (wy0 * wx0)[expand] + src[y_a, x_b] * (wy0 * wx1)[expand]
           + src[y_b, x_a] * (wy1 * wx0)[expand] + src[y_b, x_b] * (wy1 * wx1)[expand])
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------- resizing


def resize_linear(img: np.ndarray, factor: float) -> np.ndarray:
    """``cv2.resize(img, (0, 0), fx=factor, fy=factor)`` (bilinear, no anti-aliasing) of a uint8
    (H, W, C) image: output side ``round(side * factor)``, source coordinate ``(i + 0.5) / factor
    - 0.5`` clamped to the image, rounded to uint8."""
    h, w = img.shape[:2]
    oh, ow = max(1, round(h * factor)), max(1, round(w * factor))

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = (np.arange(n_out) + 0.5) / factor - 0.5
        s = np.clip(s, 0, None)
        i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    r0, r1, fr = axis(oh, h)
    c0, c1, fc = axis(ow, w)
    x = img.astype(np.float64)
    top = x[r0][:, c0] * (1 - fc)[None, :, None] + x[r0][:, c1] * fc[None, :, None]
    bottom = x[r1][:, c0] * (1 - fc)[None, :, None] + x[r1][:, c1] * fc[None, :, None]
    out = top * (1 - fr)[:, None, None] + bottom * fr[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
