"""ichseg.pipeline: the image-processing core of ichseg (workflows, interfaces, model code)."""

__version__ = "0.1.0"
