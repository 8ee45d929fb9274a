"""PDQ perceptual hashes of image files, for near-duplicate checks.

    pdq = hashcheck.pdq_hash_file("upload.jpg")
    if pdq is not None and pdq.is_usable:
        result = client.check([pdq.hash], "pdq")
        for hit in result.hits:
            print(hit.distance, hit.list_names)

PDQ hashes an image's look rather than its bytes: a resized or re-compressed
copy of an image has a hash a few bits away from the original's, and the
server reports known hashes within a Hamming distance (31 by default).

This needs the optional extra, `pip install 'hashcheck[pdq]'`, which brings
pdqhash (the reference PDQ code), numpy and Pillow. They are imported only
when a hash is computed, so the core SDK installs and runs without them.

Large JPEGs are decoded at a reduced scale (at least _DECODE_SIDE pixels a
side): PDQ itself works on a 64 x 64 downsample, so this changes a hash by a
few bits at most and saves most of the decoding time.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["PdqHash", "pdq_hash_file"]

#: The field's rule: hashes of quality 49 or less are too unstable to match.
MIN_PDQ_QUALITY = 50

_DECODE_SIDE = 1024

_MISSING_EXTRA = (
    "PDQ hashing needs the optional extra: pip install 'hashcheck[pdq]' "
    "(pdqhash, numpy and Pillow)."
)


@dataclass(frozen=True, slots=True)
class PdqHash:
    """The PDQ hash of one image and the quality score (0-100) PDQ gave it."""

    hash: bytes
    quality: int

    @property
    def hex(self) -> str:
        """The hash as 64 lowercase hex digits, PDQ's usual form."""
        return self.hash.hex()

    @property
    def is_usable(self) -> bool:
        """Whether the quality is high enough to check (at least 50)."""
        return self.quality >= MIN_PDQ_QUALITY


def pdq_available() -> bool:
    """Whether the `pdq` extra is installed."""
    try:
        _modules()
    except ImportError:
        return False
    return True


def pdq_hash_file(path: str | os.PathLike[str]) -> PdqHash | None:
    """The PDQ hash of an image file; None if Pillow cannot read it as an image.

    Raises OSError when the file cannot be opened, and ImportError, saying
    what to install, without the `pdq` extra.
    """
    numpy, image_module, pdqhash = _modules()
    with open(path, "rb") as file:
        pixels = _decoded(image_module, numpy, file)
    if pixels is None:
        return None

    bits, quality = pdqhash.compute(pixels)
    packed = numpy.packbits(numpy.asarray(bits, dtype=numpy.uint8))
    return PdqHash(packed.tobytes(), int(quality))


def _decoded(image_module: Any, numpy: Any, file: Any) -> Any:
    """The image as an (height, width, 3) uint8 array, or None if it is none."""
    try:
        with image_module.open(file) as image:
            image.draft("RGB", (_DECODE_SIDE, _DECODE_SIDE))
            rgb = image.convert("RGB")
    except (OSError, ValueError, image_module.DecompressionBombError):
        # Not an image, a damaged one, or one too large to decode safely
        # (UnidentifiedImageError is an OSError).
        return None
    if min(rgb.size) == 0:
        return None
    return numpy.ascontiguousarray(numpy.asarray(rgb, dtype=numpy.uint8))


def _modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    try:
        numpy = importlib.import_module("numpy")
        image_module = importlib.import_module("PIL.Image")
        pdqhash = importlib.import_module("pdqhash")
    except ImportError as error:
        raise ImportError(_MISSING_EXTRA) from error
    return numpy, image_module, pdqhash
