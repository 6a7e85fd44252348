"""The method settings of a run: one frozen object from the command line or the API to
every step (instead of the same parameter list in every builder)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ichseg.pipeline.cpu import PRECISIONS
from ichseg.pipeline.segmentation import (
    DEFAULT_EAH_MARGIN_MM,
    DEFAULT_GRID_SHIFTS,
    DEFAULT_HEMORRHAGE_SEED,
    DEFAULT_HEMORRHAGE_THRESHOLD,
    DEFAULT_IVH_MARGIN_MM,
    DEFAULT_MARGIN_MM,
    GRID_SHIFTS,
)

__all__ = ["MethodSettings", "TRANSFORMS", "ANTS_TRANSFORMS", "DEFAULT_TRANSFORM", "NETWORK_INPUTS"]

#: ``translation`` keeps the head at its own orientation and size (no rotation), as BLAST-CT
#: sees a scan; the atlas regions then follow a second, rigid registration.
ANTS_TRANSFORMS = {"rigid": "Rigid", "affine": "Affine", "translation": "Translation"}
TRANSFORMS = tuple(ANTS_TRANSFORMS)
#: The network sees the head as scanned: better Dice than rigid on the truth set (docs/method.md, section 7).
DEFAULT_TRANSFORM = "translation"
NETWORK_INPUTS = ("head", "brain")


@dataclass(frozen=True)
class MethodSettings:
    """How every scan of a run is processed.

    model : registered model name (:mod:`ichseg.pipeline.models`) or a weights path
    device : torch device of the network (``cpu``, ``cuda``, ``cuda:1``)
    precision : network precision, one of :data:`ichseg.pipeline.cpu.PRECISIONS`
    omp_nthreads : threads of one step (torch); Nipype reserves them per node
    transform : ANTs transform to the CT template, ``translation``, ``rigid`` or ``affine``
    network_input : the network sees the whole ``head`` or the extracted ``brain``
    margin_mm : margin around the brain mask where the network is run
    hemorrhage_threshold : total hemorrhage probability from which a voxel is blood (None: arg-max)
    hemorrhage_seed : a region of blood is kept only where it reaches this total hemorrhage
        probability somewhere (None: every region)
    ivh_margin_mm : a connected region of intraventricular blood keeps its class only if it
        comes within this many mm of the atlas's ventricles (None: the network's class everywhere)
    eah_margin_mm : a connected region of extra-axial blood keeps its class only if it comes
        within this many mm of the intracranial surface, the falx or the tentorium (None: the
        network's class everywhere)
    grid_shifts : the network is averaged over the CT moved by this many of
        :data:`ichseg.pipeline.segmentation.GRID_SHIFTS` (1: as it lies; each more costs about 0.7 run)
    """

    model: str = "blastct-v1"
    device: str = "cpu"
    precision: str = "auto"
    omp_nthreads: int = 1
    transform: str = DEFAULT_TRANSFORM
    network_input: str = "head"
    margin_mm: float = DEFAULT_MARGIN_MM
    hemorrhage_threshold: float | None = DEFAULT_HEMORRHAGE_THRESHOLD
    hemorrhage_seed: float | None = DEFAULT_HEMORRHAGE_SEED
    ivh_margin_mm: float | None = DEFAULT_IVH_MARGIN_MM
    eah_margin_mm: float | None = DEFAULT_EAH_MARGIN_MM
    grid_shifts: int = DEFAULT_GRID_SHIFTS

    def __post_init__(self):
        for name, value, allowed in (("transform", self.transform, TRANSFORMS),
                                     ("network_input", self.network_input, NETWORK_INPUTS),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.hemorrhage_threshold is not None and not 0 < self.hemorrhage_threshold < 1:
            raise ValueError(f"hemorrhage_threshold must lie between 0 and 1, not {self.hemorrhage_threshold}")
        if self.hemorrhage_seed is not None and not 0 < self.hemorrhage_seed <= 1:
            raise ValueError(f"hemorrhage_seed must lie between 0 and 1, not {self.hemorrhage_seed}")
        for name in ("ivh_margin_mm", "eah_margin_mm"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be 0 mm or more, not {value}")
        if self.grid_shifts not in range(1, len(GRID_SHIFTS) + 1):
            raise ValueError(f"grid_shifts must be 1 to {len(GRID_SHIFTS)}, not {self.grid_shifts}")

    @property
    def ants_transform(self) -> str:
        """The transform as ANTs names it (``Rigid``, ``Affine``, ``Translation``)."""
        return ANTS_TRANSFORMS[self.transform]

    def sidecar_metadata(self) -> dict:
        """What the volume table's JSON sidecar records of these settings, beside the model's
        own (threshold, seed, network input and margin)."""
        return {"Registration": {"Transform": self.ants_transform, "Tool": "ANTsPy"},
                "ClassConfinement": {"IVHMarginMM": self.ivh_margin_mm, "EAHMarginMM": self.eah_margin_mm}}

    def as_dict(self) -> dict:
        return asdict(self)
