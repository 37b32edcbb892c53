"""Digital corruptions: brightness, contrast, elastic transform, pixelate, JPEG and the hold-out saturate."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg

from vision.corruptions._ops import exact_dtype, gaussian_matrix, grid_sample_pixels, pil_box_matrix, round_half_up

Draws = dict[str, Tensor]


# ---- brightness / saturate: scikit-image HSV round trips in closed form ------------------------------

def apply_brightness(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """``hsv2rgb(h, s, clip(v + c, 0, 1))`` of scikit-image's ``rgb2hsv``, in closed form.

    With hue and saturation fixed, HSV -> RGB is linear in v, so the round trip scales the pixel by
    ``v' / v``; a black pixel (v = 0, s = 0) becomes grey ``v'``.
    """
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * (v_new / v.clamp(min=1e-30)), v_new.expand_as(x))


def apply_saturate(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """``hsv2rgb(h, clip(s * a + b, 0, 1), v)`` of scikit-image's ``rgb2hsv``, in closed form.

    For s > 0 every channel keeps its place between min and max: ``v - (v - x) * s' / s``. A grey
    pixel has hue 0 (red) in scikit-image, so added saturation tints it red: ``(v, v(1-s'), v(1-s'))``.
    """
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(delta > 0, delta / v.clamp(min=1e-30), torch.zeros_like(v))
    s_new = (s * c[0] + c[1]).clamp(0, 1)
    coloured = v - (v - x) * (s_new / s.clamp(min=1e-30))
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(delta > 0, coloured, grey)


def apply_contrast(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """``(x - mean) * c + mean`` with the mean over each image's channel."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


# ---- elastic transform ------------------------------------------------------------------------------

def draw_elastic_transform(x: Tensor, c: tuple, scale: str, g: torch.Generator | None) -> Draws:
    """Uniforms: 3 x 2 for the affine control-point jitter and two fields for the displacement."""
    n, _, h, w = x.shape
    dt = exact_dtype(x.device)
    return {"u_affine": torch.rand(n, 3, 2, generator=g, device=x.device, dtype=dt),
            "u_field": torch.rand(n, 2, h, w, generator=g, device=x.device, dtype=dt)}


def _affine_points(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # make_imagenet_c.py: centre_square = float32(shape[:2]) // 2 and square_size = min(shape) // 3,
    # used as OpenCV (x, y) points in (row, column) order, which only matters for non-square images.
    cy, cx, s = float(h // 2), float(w // 2), float(min(h, w) // 3)
    return torch.tensor([[cy + s, cx + s], [cy + s, cx - s], [cy - s, cx - s]], device=device, dtype=dtype)


def _affine_matrices(src: Tensor, dst: Tensor) -> Tensor:
    """OpenCV ``getAffineTransform``: the (N, 2, 3) matrix mapping the three ``src`` points onto ``dst``."""
    n = dst.shape[0]
    a = torch.zeros(n, 6, 6, dtype=dst.dtype, device=dst.device)
    for i in range(3):
        a[:, i, 0] = a[:, i + 3, 3] = src[i, 0]
        a[:, i, 1] = a[:, i + 3, 4] = src[i, 1]
        a[:, i, 2] = a[:, i + 3, 5] = 1
    b = torch.cat([dst[:, :, 0], dst[:, :, 1]], dim=1)
    return torch.linalg.solve(a, b).reshape(n, 2, 3)


def warp_affine_reflect101(x: Tensor, m: Tensor) -> Tensor:
    """OpenCV ``warpAffine(x, M, INTER_LINEAR, BORDER_REFLECT_101)`` for a float image, per image M.

    Follows OpenCV's fixed-point path: M is inverted, source coordinates are formed in 1/1024 units
    (per-column and per-row terms rounded separately) and cut to 1/32 pixel, whose bilinear weights
    OpenCV takes from a table.
    """
    h, w = x.shape[-2:]
    m = m.to(torch.float64)
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    inv_det = torch.where(det != 0, 1.0 / det, torch.zeros_like(det))
    a11, a22 = m[:, 1, 1] * inv_det, m[:, 0, 0] * inv_det
    a12, a21 = -m[:, 0, 1] * inv_det, -m[:, 1, 0] * inv_det
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    col = torch.arange(w, device=x.device, dtype=torch.float64)[None, None, :]
    row = torch.arange(h, device=x.device, dtype=torch.float64)[None, :, None]

    def fixed(v: Tensor) -> Tensor:
        return torch.round(v * 1024).long()  # saturate_cast<int>: round half to even

    sx = fixed(a11[:, None, None] * col) + fixed(a12[:, None, None] * row + b1[:, None, None]) + 16
    sy = fixed(a21[:, None, None] * col) + fixed(a22[:, None, None] * row + b2[:, None, None]) + 16
    # >> 5 floors to 1/32 pixel units; /32 is then exact in float
    return grid_sample_pixels(x, (sy >> 5).to(x.dtype) / 32, (sx >> 5).to(x.dtype) / 32, "mirror")


def apply_elastic_transform(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """ImageNet-C's elastic transform: random affine warp, then a smoothed random displacement field.

    The affine moves three control points by U(-jitter, jitter) (float32 like the reference) and
    resamples with ``warp_affine_reflect101``. The displacement ``dx, dy`` is U(-1, 1) noise smoothed
    by SciPy's Gaussian (sigma, truncate 3, 'reflect') times alpha; the result is sampled bilinearly
    with SciPy's half-sample 'reflect' boundary, as ``map_coordinates(order=1, mode='reflect')``.
    """
    alpha, sigma, jitter = c
    h, w = x.shape[-2:]
    pts1 = _affine_points(h, w, x.device, torch.float32)
    shift = (-jitter + 2 * jitter * d["u_affine"]).to(torch.float32)
    pts2 = pts1[None] + shift
    m = _affine_matrices(pts1.to(torch.float64), pts2.to(torch.float64))
    warped = warp_affine_reflect101(x, m)
    field = (-1 + 2 * d["u_field"]).to(x.dtype)
    gh = gaussian_matrix(h, float(sigma), 3.0, "reflect", x.device, x.dtype)
    gw = gaussian_matrix(w, float(sigma), 3.0, "reflect", x.device, x.dtype)
    disp = torch.matmul(gh, torch.matmul(field, gw.T)) * alpha
    ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None] + disp[:, 1]
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :] + disp[:, 0]
    return grid_sample_pixels(warped, ys, xs, "reflect")


# ---- pixelate ---------------------------------------------------------------------------------------

def apply_pixelate(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """PIL ``resize(int(size * c), BOX)`` then ``resize(size, BOX)`` on the 8-bit image.

    PIL resamples horizontally, then vertically, rounding to 8 bits after each pass; enlarging
    with BOX copies the pixel under each output centre.
    """
    h, w = x.shape[-2:]
    sh, sw = int(h * c), int(w * c)
    dt = x.dtype
    u = torch.round(x * 255)
    u = round_half_up(torch.matmul(u, pil_box_matrix(w, sw).to(x.device, dt).T))
    u = round_half_up(torch.matmul(pil_box_matrix(h, sh).to(x.device, dt), u))
    rows = pil_box_matrix(sh, h).argmax(dim=1).to(x.device)
    cols = pil_box_matrix(sw, w).argmax(dim=1).to(x.device)
    return u[..., rows, :][..., cols] / 255


# ---- JPEG -------------------------------------------------------------------------------------------

def apply_jpeg_compression(x: Tensor, c: int, scale: str, d: Draws) -> Tensor:
    """PIL ``save(format='JPEG', quality=c)`` and reload, via torchvision's libjpeg-turbo on the CPU.

    torchvision's CPU encoder writes the same bytes as Pillow (same library and defaults: 4:2:0,
    baseline, islow DCT), so CUDA inputs are brought to the CPU for this step rather than
    handed to nvJPEG, which encodes differently. JPEG is a per-image codec: the loop runs in C++.
    """
    u8 = torch.round(x * 255).clamp(0, 255).to(torch.uint8).cpu()
    if u8.shape[1] != 3:
        raise ValueError(f"jpeg_compression expects 3 channels; got {u8.shape[1]}")
    encoded = encode_jpeg(list(u8.unbind(0)), quality=int(c))
    decoded = torch.stack(decode_jpeg(encoded))
    return decoded.to(device=x.device, dtype=x.dtype) / 255
