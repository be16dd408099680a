"""Image preprocessing as XComposer v1 does it, with PIL only, and a clear refusal for images it cannot use.

The original pipeline is ``Image.open(path).convert("RGB")`` → 224×224 bicubic (aspect ratio not kept)
→ ``/ 255`` → CLIP mean/std. Everything here that goes beyond it only guards against inputs the
original would crash or hang on: files that are not images, damaged files, huge or 16-bit images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import LocalizedError
from ..i18n import Phrase

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Policy for what we decode. The model sees 224×224 pixels, so a larger picture adds nothing but
# memory: 64 megapixels is ~190 MB as RGB. JPEGs above it are decoded at a reduced scale (the
# decoder's DCT scaling never builds the full image); other formats above it are refused.
MAX_IMAGE_PIXELS = 64_000_000
MAX_FILE_BYTES = 50 * 1024 * 1024
# Integer and float modes hold more than 8 bits; they are rescaled rather than clipped at 255.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageRejectedError(LocalizedError, ValueError):
    """An image that cannot be used; the message says why and what to do instead."""

    section = "xcomposer"


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or a PIL image, or ImageRejectedError saying why not."""
    if isinstance(source, Image.Image):
        return to_rgb(source, Phrase("xcomposer", "the_image"))
    path = Path(source)
    name = path.name
    if not path.is_file():
        raise ImageRejectedError("image_missing", {"name": name})
    size = path.stat().st_size
    if size == 0:
        raise ImageRejectedError("image_empty", {"name": name})
    if size > MAX_FILE_BYTES:
        raise ImageRejectedError("image_too_large",
                                 {"name": name, "megabytes": size / 2**20, "limit": MAX_FILE_BYTES // 2**20})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageRejectedError("image_bomb", {"name": name, "limit": MAX_IMAGE_PIXELS // 1_000_000}) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejectedError("image_unreadable", {"name": name}) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejectedError("image_damaged", {"name": name, "error": str(exc)}) from exc
    with image:
        reduce_before_decoding(image, name)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRejectedError("image_truncated", {"name": name, "error": str(exc)}) from exc
        return to_rgb(image, name)


def reduce_before_decoding(image: Image.Image, name: str) -> None:
    """Shrink a huge JPEG at decode time; refuse any other image above MAX_IMAGE_PIXELS."""
    width, height = image.size
    if width * height <= MAX_IMAGE_PIXELS:
        return
    if image.format == "JPEG":
        # draft() picks the strongest DCT reduction (1/2, 1/4, 1/8) that stays at least the size asked for,
        # so asking for half the limit's side keeps the result under the limit.
        shrink = 2 * (width * height / MAX_IMAGE_PIXELS) ** 0.5
        image.draft("RGB", (int(width / shrink), int(height / shrink)))
        if image.size[0] * image.size[1] <= MAX_IMAGE_PIXELS:
            return
    raise ImageRejectedError("image_too_many_pixels", {"name": name, "width": width, "height": height,
                                                       "megapixels": width * height / 1e6,
                                                       "limit": MAX_IMAGE_PIXELS // 1_000_000})


def to_rgb(image: Image.Image, name: str | Phrase) -> Image.Image:
    """Convert any PIL mode to RGB: alpha dropped as the original does, wide modes rescaled to 8 bits."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: the first frame
    if image.mode in WIDE_MODES:
        image = rescale_to_8bit(image)
    if image.mode == "RGB":
        return image.copy()  # the caller may close the file-backed original
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about palette transparency; alpha is dropped anyway
            return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejectedError("image_mode", {"name": name, "mode": image.mode, "error": str(exc)}) from exc


def rescale_to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image as 8-bit 'L', using its full value range."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and values.size and values.max() <= 1.0:
        top = 1.0
    else:
        top = float(values.max()) if values.size and values.max() > 0 else 1.0
    scaled = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def resize_bicubic(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image.resize((width, height), BICUBIC)`` with Pillow 13's order of the two 1-D passes.

    Pillow resamples one axis, rounds to 8 bits, then the other. Up to 12.x it always did the
    horizontal pass first; 13.0 does the vertical pass first when only the height shrinks. The
    reference outputs were made with 13.0, so the order is fixed here for every Pillow version.
    """
    if height < image.height and width >= image.width:
        return image.resize((image.width, height), Image.BICUBIC).resize((width, height), Image.BICUBIC)
    return image.resize((width, image.height), Image.BICUBIC).resize((width, height), Image.BICUBIC)


def pixel_values(image: Image.Image) -> torch.Tensor:
    """The (1, 3, 224, 224) float32 model input for an RGB image, bit-identical to the original transform."""
    resized = resize_bicubic(image, IMAGE_SIZE, IMAGE_SIZE)
    tensor = torch.from_numpy(np.array(resized, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    tensor = tensor.to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return tensor.sub(mean).div(std).unsqueeze(0)


def image_to_pixels(source: str | Path | Image.Image) -> torch.Tensor:
    """``load_image`` then ``pixel_values``."""
    return pixel_values(load_image(source))
