"""Container images for the real node, built from Debian packages without a registry or daemon."""

from .node import base, pause
from .oci import Image, ImageError, import_into

__all__ = ["Image", "ImageError", "base", "import_into", "pause"]
