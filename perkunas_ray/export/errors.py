"""The export error: an output that exists, a bad option, or a model feature the target format cannot express."""

from perkunas_ray.errors import PerkunasError


class ExportError(PerkunasError, ValueError):
    """An export cannot be written as asked; the message names the option, path or model feature."""
