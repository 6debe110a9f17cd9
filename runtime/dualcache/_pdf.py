"""Text extraction from PDF resumes, locally, with pypdf (the ``pdf`` extra).

No external service is needed for this: pypdf is pure Python and well kept.
"""

from __future__ import annotations

import io
import logging

from dualcache._exceptions import InvalidInputError

__all__ = ["MAX_PDF_BYTES", "extract_pdf_text"]

logger = logging.getLogger(__name__)

MAX_PDF_BYTES = 20 * 1024 * 1024
"""Largest PDF accepted, in bytes."""


def extract_pdf_text(data: bytes) -> str:
    """Return the text of every page of the PDF ``data``, pages separated by blank lines.

    Raises:
        ImportError: pypdf is not installed (install the ``pdf`` extra: ``pip install 'dualcache[pdf]'``).
        InvalidInputError: not bytes, too large, not a readable PDF, or a PDF without extractable text
            (a scanned resume: send it as an image with ``image_url=`` instead).
    """
    if not isinstance(data, bytes | bytearray):
        raise InvalidInputError(f"pdf must be the file's bytes, got {type(data).__name__}")
    if not data:
        raise InvalidInputError("pdf is empty; pass the bytes of a PDF file")
    if len(data) > MAX_PDF_BYTES:
        raise InvalidInputError(f"pdf is {len(data)} bytes; at most {MAX_PDF_BYTES} are accepted")
    if not bytes(data[:1024]).lstrip().startswith(b"%PDF-"):
        raise InvalidInputError("pdf does not start with '%PDF-'; pass the bytes of a PDF file")
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as exc:
        raise ImportError(
            "parse_resume(pdf=...) needs pypdf: install the 'pdf' extra (pip install 'dualcache[pdf]')"
        ) from exc
    try:
        reader = PdfReader(io.BytesIO(bytes(data)))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"pdf could not be read: {type(exc).__name__}: {exc}") from None
    text = "\n\n".join(p for p in pages if p)
    if not text.strip():
        raise InvalidInputError(
            "pdf has no extractable text (a scanned document?); send it as an image with image_url= instead"
        )
    return text
