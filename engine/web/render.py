"""Rendered images (WADO-RS /rendered, PS3.18 8.3.5.1): one frame as PNG or JPEG.

Runs in a codec worker process (the frame may have to be decoded).  Greyscale
is rescaled (Modality LUT), windowed (PS3.3 C.11.2.1.2: linear, linear exact,
sigmoid) with the request's `window=center,width[,function]`, else the
instance's first Window Center / Width, else its minimum and maximum, and
inverted for MONOCHROME1.  Colour is sent as decoded, scaled to 8 bits.
"""
from __future__ import annotations

import io
import math

import numpy as np

from engine.web.frames import FrameError, frame_count, read_stored_dataset

FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "linear_exact": "LINEAR_EXACT",
             "sigmoid": "SIGMOID"}
MEDIA_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


def parse_window(text: str) -> tuple[float, float, str]:
    """`center,width[,function]` → (center, width, LINEAR|LINEAR_EXACT|SIGMOID); ValueError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window must be center,width[,function]")
    center, width = float(parts[0]), float(parts[1])
    function = FUNCTIONS.get(parts[2].lower()) if len(parts) == 3 else "LINEAR"
    if function is None:
        raise ValueError("window function must be linear, linear-exact or sigmoid")
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0 or \
            (function == "LINEAR" and width < 1):
        raise ValueError("window width must be positive (at least 1 for linear)")
    return center, width, function


def apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Greyscale values → 0..255 floats (PS3.3 C.11.2.1.2)."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    scaled = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0 if width > 1 else \
        np.where(x > center - 0.5, 255.0, 0.0)
    return np.where(x <= low, 0.0, np.where(x > high, 255.0, np.clip(scaled, 0.0, 255.0)))


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple)) or
                     type(value).__name__ == "MultiValue" else value)
    except (TypeError, ValueError, IndexError):
        return None


def render_frame(path: str, offset: int, ts: str, frame: int,
                 window: tuple[float, float, str] | None, media_type: str, quality: int,
                 viewport: tuple[int, int] | None) -> bytes:
    """Frame `frame` (1-based) of the instance, rendered as `media_type`."""
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds = read_stored_dataset(path, offset, ts)
    if 0x7FE00010 not in ds:
        raise FrameError("the instance has no Pixel Data")
    count = frame_count(ds)
    if not 1 <= frame <= count:
        raise FrameError(f"frame {frame} does not exist (the instance has {count})")
    try:
        array = pixel_array(ds, index=frame - 1)
    except Exception as exc:  # noqa: BLE001 - any codec failure
        raise FrameError(f"cannot decode frame {frame}: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if array.ndim == 2:  # greyscale
        values = apply_modality_lut(array, ds)
        if window is None:
            center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
            if center is not None and width is not None and width > 0:
                function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
                if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                    function = "LINEAR"
                window = (center, max(width, 1.0), function)
            else:
                low, high = float(np.min(values)), float(np.max(values))
                window = ((low + high) / 2 + 0.5, max(high - low + 1, 1.0), "LINEAR")
        out = apply_window(values, *window)
        if photometric == "MONOCHROME1":
            out = 255.0 - out
        image = Image.fromarray(np.rint(out).astype(np.uint8), "L")
    else:
        if array.dtype != np.uint8:
            bits = int(ds.get("BitsStored", 8))
            array = (array.astype(np.float64) * (255.0 / ((1 << bits) - 1))).clip(0, 255)
            array = np.rint(array).astype(np.uint8)
        image = Image.fromarray(array[..., :3], "RGB")
    if viewport is not None:
        image.thumbnail(viewport)
    buffer = io.BytesIO()
    fmt = MEDIA_FORMATS[media_type]
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
