"""Dermatology-specific image corruptions at three severities: what other clinics' images differ by.

Another clinic's dermatoscope and camera light the skin at another colour temperature, expose and
compress differently, frame the lesion inside a black dermoscope circle or crop it square, and
shoot through hair. Each corruption here imitates one such difference (after MedMNIST-C, Di Salvo
et al., 2024, dermatology set, written with numpy and Pillow), at severities 1 (mild) to 3
(strong); severity 0 is the image unchanged.

They act on the square uint8 images the model takes (the image cache's, `read_image`'s): the
robustness benchmark (`evaluation.robustness`) scores a model on corrupted validation and test
images, and the training sequence can corrupt training images as augmentation
(`CorruptionAugmentation`). Every random choice (a warm or a cool cast, where a hair lies) comes
from the generator passed in, so a seed gives the same corruption every time.

    rng = np.random.default_rng(0)
    image = corrupt(image, "hair", 2, rng)
    images = corrupt_images(images, "jpeg", 3, seed=0, keys=image_keys(image_ids))
"""

import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEVERITIES = (1, 2, 3)
# The Rec. 601 luma weights: the grey an image's saturation is blended towards.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _sign(rng):
    return 1.0 if rng.random() < 0.5 else -1.0


def colour_temperature(image, strength, rng):
    """A warmer (red up, blue down) or cooler light, at even odds; `strength` the gain's change."""
    shift = strength * _sign(rng)
    return image.astype(np.float32) * np.array([1 + shift, 1.0, 1 - shift], dtype=np.float32)


def gamma(image, exponent, rng):
    """Another tone curve: 255 (x / 255) ** g, g = `exponent` or its inverse at even odds."""
    power = exponent ** _sign(rng)
    return 255.0 * (image.astype(np.float32) / 255.0) ** power


def brightness(image, strength, rng):
    """Over- or under-exposure at even odds: every channel times 1 +/- `strength`."""
    return image.astype(np.float32) * (1 + strength * _sign(rng))


def contrast(image, factor, rng):
    """Flatter contrast: each pixel moved towards the image's mean value, keeping `factor` of its distance."""
    values = image.astype(np.float32)
    mean = values.mean()
    return mean + (values - mean) * factor


def saturation(image, strength, rng):
    """Paler or more vivid colour at even odds: blended away from or towards its grey, by 1 +/- `strength`."""
    values = image.astype(np.float32)
    grey = values @ LUMA
    return grey[..., None] + (values - grey[..., None]) * (1 + strength * _sign(rng))


def blur(image, sigma, rng):
    """An out-of-focus lens: a Gaussian blur of `sigma` times the image's side."""
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma * image.shape[0])))


def jpeg(image, quality, rng):
    """Saved as JPEG at `quality` (of 100) and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def black_corners(image, radius, rng):
    """The black surround of a dermoscope's round field: everything outside a circle of `radius`
    half-sides (1: the inscribed circle; the half-diagonal, 1.41, would black nothing) turns black;
    the circle's centre is off the image's by up to 3% of the side."""
    size = image.shape[0]
    centre = size / 2 + rng.uniform(-0.03, 0.03, size=2) * size
    rows, columns = np.ogrid[:size, : image.shape[1]]
    outside = (rows + 0.5 - centre[0]) ** 2 + (columns + 0.5 - centre[1]) ** 2 > (radius * size / 2) ** 2
    corrupted = image.copy()
    corrupted[outside] = 0
    return corrupted


def hair(image, count, rng):
    """`count` dark hairs: curved lines of a third to nine tenths of the side, about 1 px wide at 128 px."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    size = image.shape[0]
    for _ in range(count):
        start = rng.uniform(0, size, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 0.9) * size
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        # A quadratic Bezier curve through a control point off the chord: a hair bends.
        control = (start + end) / 2 + rng.uniform(-0.25, 0.25) * length * np.array([-np.sin(angle), np.cos(angle)])
        steps = np.linspace(0, 1, 16)[:, None]
        points = (1 - steps) ** 2 * start + 2 * (1 - steps) * steps * control + steps**2 * end
        shade = int(rng.integers(10, 60))
        width = max(1, round(size / 128 * rng.uniform(0.7, 1.6)))
        draw.line(
            [tuple(point) for point in points],
            fill=(shade, int(shade * 0.8), int(shade * 0.6)),
            width=width,
            joint="curve",
        )
    return np.asarray(picture)


def centre_crop(image, fraction, rng):
    """A source that crops its frames square, and tighter: the cached image is the 4:3 frame
    squashed to a square, so its central square is the central 3/4 of the width; `fraction` of that
    square's side is kept (1, 0.9, 0.8) and resized back to the model's size."""
    size_y, size_x = image.shape[:2]
    keep_y, keep_x = size_y * fraction, size_x * 0.75 * fraction
    top, left = (size_y - keep_y) / 2, (size_x - keep_x) / 2
    cropped = Image.fromarray(image).resize(
        (size_x, size_y), Image.Resampling.BILINEAR, box=(left, top, left + keep_x, top + keep_y)
    )
    return np.asarray(cropped)


def low_resolution(image, factor, rng):
    """A coarser camera: the image shrunk by `factor` and enlarged back."""
    size_y, size_x = image.shape[:2]
    small = Image.fromarray(image).resize(
        (max(1, round(size_x / factor)), max(1, round(size_y / factor))), Image.Resampling.BILINEAR
    )
    return np.asarray(small.resize((size_x, size_y), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class Corruption:
    """A corruption: `function(image, parameter, rng)`, and its parameter at severities 1, 2, 3."""

    function: object
    parameters: tuple
    unit: str


# In the order the benchmark reports them.
CORRUPTIONS = {
    "colour_temperature": Corruption(colour_temperature, (0.08, 0.16, 0.25), "red and blue gain +/-"),
    "gamma": Corruption(gamma, (1.25, 1.5, 2.0), "gamma or its inverse"),
    "brightness": Corruption(brightness, (0.15, 0.3, 0.45), "exposure +/-"),
    "contrast": Corruption(contrast, (0.75, 0.55, 0.35), "contrast kept"),
    "saturation": Corruption(saturation, (0.3, 0.6, 0.9), "saturation +/-"),
    "blur": Corruption(blur, (0.004, 0.008, 0.014), "Gaussian sigma / side"),
    "jpeg": Corruption(jpeg, (30, 15, 7), "JPEG quality"),
    "black_corners": Corruption(black_corners, (1.3, 1.15, 1.0), "circle radius / half side"),
    "hair": Corruption(hair, (4, 10, 20), "hairs"),
    "centre_crop": Corruption(centre_crop, (1.0, 0.9, 0.8), "of the central square kept"),
    "low_resolution": Corruption(low_resolution, (2, 3, 4), "downsampling factor"),
}


def check_corruption(name, severity):
    """Raises ValueError naming what is wrong with a corruption's name or severity."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r} (expected one of {', '.join(CORRUPTIONS)})")
    if severity not in (0, *SEVERITIES):
        raise ValueError(
            f"corruption severity must be 0 (none) or one of {', '.join(map(str, SEVERITIES))}; got {severity!r}"
        )


def corrupt(image, name, severity, rng):
    """One image corrupted.

    Args:
        image: (height, width, 3) uint8 RGB.
        name: a key of `CORRUPTIONS`.
        severity: 1 to 3; 0 returns the image as it is.
        rng: a numpy Generator; its state fixes every random choice.

    Returns:
        A new (height, width, 3) uint8 array.
    """
    check_corruption(name, severity)
    if severity == 0:
        return image.copy()
    corruption = CORRUPTIONS[name]
    corrupted = corruption.function(image, corruption.parameters[severity - 1], rng)
    return np.clip(np.rint(corrupted), 0, 255).astype(np.uint8) if corrupted.dtype != np.uint8 else np.array(corrupted)


def image_keys(image_ids):
    """A stable integer per image id (its CRC-32): what seeds an image's corruption, so that an
    image is corrupted alike in whichever subset, order or fold model's batch it comes."""
    return np.array([zlib.crc32(str(image_id).encode()) for image_id in image_ids], dtype=np.int64)


def corrupt_images(images, name, severity, *, seed, keys):
    """A batch corrupted, image i with the generator of (seed, corruption, severity, keys[i]).

    Args:
        images: (n, height, width, 3) uint8.
        name, severity: as `corrupt`'s.
        seed: the benchmark's seed.
        keys: n integers, one per image (`image_keys`).

    Returns:
        A new uint8 array of the same shape.
    """
    check_corruption(name, severity)
    index = list(CORRUPTIONS).index(name)
    corrupted = np.empty_like(images)
    for row, (image, key) in enumerate(zip(images, keys)):
        corrupted[row] = corrupt(
            np.asarray(image), name, severity, np.random.default_rng([seed, index, severity, int(key)])
        )
    return corrupted


@dataclass(frozen=True)
class CorruptionAugmentation:
    """Training images corrupted at random (the setting `corruption_augmentation`): the
    augmentation MedMNIST-C recommends for robustness to other clinics' images.

    Attributes:
        p: the chance that a training image is corrupted; 0: off.
        severity: the strongest severity; each corrupted image draws one of 1 to it, evenly.
        corruptions: the names drawn from, evenly (default: every one of `CORRUPTIONS`).
    """

    p: float = 0.0
    severity: int = 2
    corruptions: tuple = tuple(CORRUPTIONS)

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p <= 1:
            raise ValueError(
                f"corruption_augmentation p is the chance an image is corrupted, in [0, 1]; got {self.p!r}"
            )
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"corruption_augmentation severity is the strongest drawn, one of {', '.join(map(str, SEVERITIES))}; got {self.severity!r}"
            )
        if isinstance(self.corruptions, str) or not self.corruptions:
            raise ValueError(
                f"corruption_augmentation corruptions must be a list of names (of {', '.join(CORRUPTIONS)}); got {self.corruptions!r}"
            )
        for name in self.corruptions:
            check_corruption(name, 0)

    @property
    def active(self):
        return self.p > 0

    def apply(self, images, rng):
        """Corrupts each image of a uint8 batch with chance `p`; returns a new array (the input is
        left as it is: it may be the read-only image cache)."""
        chosen = rng.random(len(images)) < self.p
        names = rng.integers(len(self.corruptions), size=len(images))
        severities = rng.integers(1, self.severity + 1, size=len(images))
        augmented = np.array(images)
        for row in np.flatnonzero(chosen):
            augmented[row] = corrupt(augmented[row], self.corruptions[names[row]], int(severities[row]), rng)
        return augmented
