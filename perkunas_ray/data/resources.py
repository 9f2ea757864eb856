"""Where the TinyStories slice bundled with the package lives, so the default job needs no download."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from perkunas_ray.errors import DataError

BUNDLED_CORPUS_NAME = "tinystories_sample.txt"


def bundled_corpus_path() -> Path:
    """Return the path of the bundled TinyStories sample (complete stories split by `<|endoftext|>`)."""
    path = Path(str(resources.files("perkunas_ray").joinpath("corpus", BUNDLED_CORPUS_NAME)))
    if not path.is_file():
        raise DataError(f"the bundled corpus {path} is missing; reinstall perkunas-ray")
    return path
