"""One image file -> an 8-bit RGB `PIL.Image`, upright (shared by training and serving).

`load_image` applies the EXIF orientation, turns every pixel format
(greyscale, palette, alpha, 16-bit, CMYK, ...) into 8-bit RGB (`to_rgb`),
refuses images over a pixel limit (decompression bombs), and reports every
unreadable file as one `UserError` line naming the file. `is_image_file` and
`images_under` say which files of a folder count as images.

numpy and Pillow only: serving decodes images without importing torch.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from supemb.errors import UserError

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
)  # fmt: skip
# A 64 MP photo is plausible (phone cameras reach 50 MP); a 64k x 64k PNG of
# a few kB is an attack that would allocate 12 GB.
DEFAULT_MAX_PIXELS = 64_000_000


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an 8-bit RGB `PIL.Image`, upright.

    EXIF orientation is applied; see `to_rgb` for the pixel formats.
    max_pixels: refuse images with more pixels than this (None: no limit of
    our own; Pillow's global `Image.MAX_IMAGE_PIXELS` guard still applies).
    Raises UserError with one line "<path>: <problem>" for a missing, empty,
    non-image, truncated, corrupt or oversized file.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a folder, not an image file")
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise UserError(f"{path}: empty file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            # Checked on the header, before any pixel is decoded.
            if max_pixels is not None and w * h > max_pixels:
                raise UserError(
                    f"{path}: image is {w}x{h} ({w * h / 1e6:.1f} MP), over the limit of "
                    f"{max_pixels / 1e6:g} MP (decompression-bomb guard; if you trust the file, downscale "
                    "it or open it yourself and pass the PIL image)"
                )
            im.load()
            return to_rgb(_upright(im))
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file (cannot identify image format)") from None
    except PermissionError:
        raise UserError(f"{path}: cannot read (permission denied)") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: too many pixels ({one_line(e)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        msg = one_line(e)
        if isinstance(e, EOFError) or "truncated" in msg.lower():
            raise UserError(f"{path}: truncated image (the file ends before the pixel data does)") from None
        raise UserError(f"{path}: corrupt image ({msg or type(e).__name__})") from None


def one_line(e: BaseException) -> str:
    """An exception's message on one line (for "<file>: <problem>" errors)."""
    return " ".join(str(e).split())


EXIF_ORIENTATION = 0x0112


def upright(im: Image.Image) -> Image.Image:
    """`im` turned as its EXIF orientation tag says (the same object when it has none), so a
    photo opened by the caller is read the way `load_image` reads the same file."""
    try:
        turned = im.getexif().get(EXIF_ORIENTATION, 1) not in (None, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        turned = False
    return _upright(im) if turned else im


def _upright(im: Image.Image) -> Image.Image:
    """A copy of `im` with its EXIF orientation applied (the file can be closed after)."""
    try:
        out = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        # Broken EXIF metadata must not make good pixels unreadable.
        out = None
    return out if out is not None else im.copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit "RGB" (the same object when it already is).

    - alpha ("RGBA", "LA", "PA", palette/colour-key transparency): composited
      on white, the usual background of product and face crops;
    - 16-bit greyscale ("I;16*"): scaled by 255/65535;
    - 32-bit integer ("I"): taken as 8-bit when all values lie in [0, 255],
      else as 16-bit (what PNG/TIFF decoders put there);
    - float ("F"): taken as [0, 1] when the maximum is <= 1, else [0, 255];
    - everything else ("L", "1", "P", "CMYK", "YCbCr", ...): Pillow's convert.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float32) * (255.0 / 65535.0)
        return _grey_to_rgb(a)
    if mode == "I":
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 255):
            a = np.clip(a, 0, 65535) * (255.0 / 65535.0)
        return _grey_to_rgb(a)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return _grey_to_rgb(a)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_rgb(a: np.ndarray) -> Image.Image:
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")


def is_image_file(path: Path) -> bool:
    """By suffix, case-insensitive; hidden files (".name", macOS "._name") are not images."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def images_under(folder: Path) -> list[Path]:
    """The image files anywhere under `folder`, sorted; hidden files and folders are left out."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip

