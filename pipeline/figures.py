"""Report figures: the segmentation mosaic, the registration check and the group plots.

Drawn with matplotlib (:mod:`ichseg.pipeline.reports` puts them into HTML pages). nilearn's
plotting and nireports' reportlets, which draw with matplotlib too, were measured on these
figures and not adopted: neither keeps the scan's own (tilted) grid nor draws faster or
smaller, and nireports draws labels as outlines only (``bench/figure_libraries.py``,
docs/benchmarks.md).

* :func:`plot_segmentation_mosaic` -- axial mosaic of the CT on its own grid, hemorrhage labels
  overlaid in the colours of :mod:`ichseg.pipeline.labels`, brain-mask outline, legend with
  class volumes;
* :func:`plot_registration_check` -- the CT resampled to the template, with the template's
  brain outline and ventricle/CSF edges drawn over it (axial, coronal and sagittal rows);
* :func:`plot_label_map_comparison` -- the label maps of several runs of one CT, a row each, on
  the same slices (``bench/real_scans.py``);
* :func:`plot_group_volumes`, :func:`plot_courses` -- the group report's plots.

Figure format. Figures are SVG (the ``figure`` derivative kind is ``.svg``), like fMRIPrep's:
text, outlines and legends are vectors, and each CT panel is one raster image embedded in the
SVG. The rasters are JPEG (``data:image/jpeg;base64``), resampled to at most
:data:`MAX_PANEL_PX` pixels a side: noisy CT greyscale compresses several times better in JPEG
than in PNG, which is all that matplotlib's SVG writer embeds, so :func:`_save_svg` swaps them
(sizes in docs/benchmarks.md, "Figures"). Any browser and Inkscape display such SVGs.

Orientation. Images are reoriented with :func:`nibabel.as_closest_canonical` (a permutation
and flips of the voxel axes, no resampling) and shown in *radiological* convention by default
(patient's right on the left of the image, as on a CT console); every panel carries ``R``/``L``
markers and the figure says which convention it uses. Pixels are drawn with their true size in
mm (the aspect ratio comes from the affine), so thick-slice and anisotropic scans are not
distorted. A gantry-tilted scan is shown on its own (tilted) voxel grid, as a viewer would.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import ndimage as ndi

from ichseg.pipeline.fileutils import atomic_write_text
from ichseg.pipeline.geometry import bounding_box
from ichseg.pipeline.labels import (
    BRAIN_VOLUME_COLUMN,
    FOREGROUND_LABELS,
    HEMORRHAGE_INDICES,
    LABELS,
    TOTAL_HEMORRHAGE_COLUMN,
)
from ichseg.pipeline.tsv import MISSING
from ichseg.pipeline.volumes import STATUS_OK

__all__ = [
    "BRAIN_WINDOW_HU",
    "comparison_slices",
    "plot_courses",
    "plot_group_volumes",
    "plot_label_map_comparison",
    "plot_registration_check",
    "plot_segmentation_mosaic",
    "select_slices",
]

#: CT display window (HU) of every figure: the standard brain window (level 40, width 80).
BRAIN_WINDOW_HU = (0.0, 80.0)
#: Opacity of the label colours over the CT.
OVERLAY_ALPHA = 0.5
#: Colour of the brain-mask outline (distinct from every label colour).
MASK_COLOR = "#22d3ee"
#: Colours of the template edges in the registration check: brain outline, CSF/ventricles.
TEMPLATE_OUTLINE_COLOR = "#ff3b30"
TEMPLATE_CSF_COLOR = "#ffd60a"
#: Largest side (pixels) of the raster of one panel, and its JPEG quality.
MAX_PANEL_PX = 256
#: Same for the (smaller) panels of the registration check.
MAX_REGISTRATION_PANEL_PX = 180
JPEG_QUALITY = 85


_SVG_RC = {
    "svg.fonttype": "none",  # text stays text: small, selectable, searchable
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "path.simplify": True,  # contour lines lose the points that move them by less than a pixel
    "path.simplify_threshold": 1.0,
}


# --------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------


class _RASVolume:
    """A 3D image in closest-RAS voxel order (as :func:`nibabel.as_closest_canonical`).

    Only axis permutations and flips, no resampling; whole arrays are views of the file's
    data, and :meth:`axial` reads one slice without loading the image (a thin-slice CT is
    hundreds of MB as float32).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.img = nib.load(self.path)
        shape = tuple(int(n) for n in self.img.shape)
        if len(shape) < 3 or any(n != 1 for n in shape[3:]):
            raise ValueError(f"{self.path}: expected a 3D image, got shape {shape}.")
        self.file_shape = shape[:3]
        self.ornt = nib.io_orientation(self.img.affine)
        self.affine = self.img.affine @ nib.orientations.inv_ornt_aff(self.ornt, self.file_shape)
        canonical = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            canonical[int(target)] = self.file_shape[axis]
        self.shape = tuple(canonical)
        self._slice_axis = int(np.flatnonzero(self.ornt[:, 0] == 2)[0])

    def array(self, dtype=None) -> np.ndarray:
        data = np.asanyarray(self.img.dataobj)
        data = data.reshape(self.file_shape)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        return nib.orientations.apply_orientation(data, self.ornt)

    def file_slice(self, k: int) -> int:
        """Index in the file of canonical axial slice ``k``."""
        return int(k) if self.ornt[self._slice_axis, 1] > 0 else self.shape[2] - 1 - int(k)

    def axial(self, k: int, dtype=np.float32) -> np.ndarray:
        """Canonical axial slice ``k``, indexed [x (R), y (A)]."""
        index: list[Any] = [slice(None)] * 3 + [0] * (len(self.img.shape) - 3)
        index[self._slice_axis] = self.file_slice(k)
        plane = np.asarray(self.img.dataobj[tuple(index)], dtype=dtype)
        rest = [a for a in range(3) if a != self._slice_axis]
        return nib.orientations.apply_orientation(plane, self.ornt[rest])


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def _same_grid(ref: _RASVolume, other: _RASVolume, what: str, ref_name: str) -> None:
    if ref.shape != other.shape or not np.allclose(ref.affine, other.affine, atol=1e-3):
        raise ValueError(
            f"The {what} is not on the grid of the {ref_name} (shape {other.shape} vs "
            f"{ref.shape}, or different affines): give images on the same grid."
        )


def _bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels per axis (whole image if empty)."""
    return bounding_box(mask, margin) or tuple(slice(0, n) for n in mask.shape)


def _window(hu: np.ndarray, window=BRAIN_WINDOW_HU) -> np.ndarray:
    lo, hi = window
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _hex_rgb(color: str) -> np.ndarray:
    color = color.lstrip("#")
    return np.array([int(color[i : i + 2], 16) / 255.0 for i in (0, 2, 4)], dtype=np.float32)


def _display(plane: np.ndarray, flip_lr: bool) -> np.ndarray:
    """A plane indexed [horizontal axis, vertical axis] as an image (rows bottom-up)."""
    img = np.asarray(plane).T
    return img[:, ::-1] if flip_lr else img


def _display_zoom(
    shape_px: Sequence[int], pixel_mm: Sequence[float], max_px: int = MAX_PANEL_PX
) -> tuple[float, float]:
    """Zoom factors (rows, cols) that give square display pixels, at most ``max_px`` a side."""
    height_mm = shape_px[0] * pixel_mm[0]
    width_mm = shape_px[1] * pixel_mm[1]
    target = max(height_mm, width_mm) / max_px
    target = max(target, min(pixel_mm))  # never finer than the finest voxel size
    return pixel_mm[0] / target, pixel_mm[1] / target


def _resample_display(img: np.ndarray, zoom: tuple[float, float], order: int = 1) -> np.ndarray:
    """Resample a 2D (or 2D x channels) image for display, smoothing before downsampling."""
    img = np.asarray(img, dtype=np.float32)
    factors = tuple(zoom) + (1.0,) * (img.ndim - 2)
    if np.allclose(factors, 1.0):
        return img
    sigma = [max(0.0, (1.0 / f - 1.0) / 2.0) if f < 1 else 0.0 for f in factors]
    if any(s > 0 for s in sigma):
        img = ndi.gaussian_filter(img, sigma, mode="nearest")
    return ndi.zoom(img, factors, order=order, mode="nearest", grid_mode=True)


def _compose(gray: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """RGB image: windowed CT with the label colours blended in."""
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if labels is not None:
        for lab in FOREGROUND_LABELS:
            where = labels == lab.index
            if where.any():
                rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * _hex_rgb(lab.color)
    return rgb


def _jpeg_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image  # a dependency of matplotlib

    array = np.clip(np.rint(np.asarray(rgb) * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _draw_panel(ax, rgb: np.ndarray, extent: tuple[float, float, float, float], gid: str):
    """Draw an RGB raster; its PNG is swapped for a JPEG when the SVG is written."""
    image = ax.imshow(rgb, origin="lower", extent=extent, interpolation="none", aspect="equal")
    image.set_gid(gid)
    return image


def _save_svg(fig: Figure, out_file: str | os.PathLike, rasters: Mapping[str, np.ndarray]) -> Path:
    """Write ``fig`` as SVG with each raster (by gid) embedded as JPEG; atomically."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", facecolor=fig.get_facecolor(), metadata={"Date": None})
    text = buffer.getvalue()
    for gid, rgb in rasters.items():
        # matplotlib writes <image xlink:href="data:image/png;base64,..." id="gid" ... style=
        # "image-rendering:pixelated"/>: swap in the JPEG, and let the browser smooth it.
        tag = re.compile(r'<image\b[^>]*\bid="' + re.escape(gid) + r'"[^>]*/>', re.DOTALL)
        match = tag.search(text)
        if match is None:  # pragma: no cover - depends on matplotlib's SVG layout
            raise RuntimeError(f"could not find raster {gid!r} in the SVG written by matplotlib")
        href = f'xlink:href="{_jpeg_data_uri(rgb)}"'
        element = re.sub(r'xlink:href="data:image/png;base64,[^"]*"', lambda _, h=href: h, match.group(0))
        element = re.sub(r'\s*style="image-rendering:[^"]*"', "", element)
        text = text[: match.start()] + element + text[match.end() :]
    text = _round_path_data(text)
    out = Path(out_file)
    if out.suffix.lower() != ".svg":
        raise ValueError(f"{out}: figures are written as SVG (.svg).")
    atomic_write_text(out, text)
    return out


_TEXT_BOX = {"boxstyle": "square,pad=0.15", "facecolor": "black", "alpha": 0.55, "edgecolor": "none"}


def _panel_text(ax, x: float, y: float, text: str, size: float = 6.5, **kwargs):
    """White text on a dark box, readable over bone."""
    kwargs.setdefault("ha", "left")
    kwargs.setdefault("va", "bottom")
    return ax.text(x, y, text, transform=ax.transAxes, color="white", fontsize=size, bbox=_TEXT_BOX, **kwargs)


def _orientation_markers(ax, left: str, right: str, size: float = 7.0):
    _panel_text(ax, 0.015, 0.5, left, size, va="center", fontweight="bold")
    _panel_text(ax, 0.985, 0.5, right, size, ha="right", va="center", fontweight="bold")


def _plain_axes(ax):
    ax.set_axis_off()
    ax.set_facecolor("black")


def _draw_contour(ax, field: np.ndarray, level: float, color: str, extent, linewidth: float,
                  min_length_mm: float = 0.0) -> None:
    """Iso-line of a 2D field (image rows bottom-up), as lines; those shorter than
    ``min_length_mm`` are left out. matplotlib simplifies them when it writes the SVG
    (``path.simplify``)."""
    import contourpy  # a dependency of matplotlib

    field = np.asarray(field, dtype=np.float64)
    if not (field.min() < level < field.max()):
        return
    rows, cols = field.shape
    dx = (extent[1] - extent[0]) / cols
    dy = (extent[3] - extent[2]) / rows
    for line in contourpy.contour_generator(z=field).lines(level):
        xy = np.column_stack(
            [extent[0] + (line[:, 0] + 0.5) * dx, extent[2] + (line[:, 1] + 0.5) * dy]
        )
        if min_length_mm and np.hypot(*np.diff(xy, axis=0).T).sum() < min_length_mm:
            continue
        ax.plot(xy[:, 0], xy[:, 1], color=color, linewidth=linewidth, solid_joinstyle="round")


_NUMBER = re.compile(r"-?\d+\.\d{2,}")


def _round_path_data(svg: str) -> str:
    """Round the coordinates of SVG paths to 0.1 pt (matplotlib writes six decimals)."""
    return re.sub(
        r'(\sd=")([^"]*)(")',
        lambda m: m.group(1) + _NUMBER.sub(lambda n: f"{float(n.group()):.1f}", m.group(2)) + m.group(3),
        svg,
    )


# --------------------------------------------------------------------------------------------
# Segmentation mosaic
# --------------------------------------------------------------------------------------------


def select_slices(
    coverage: Sequence[float], hemorrhage: Sequence[float], n_slices: int, min_fraction: float = 0.1
) -> list[int]:
    """Pick ``n_slices`` slice indices: spread over the brain, plus the most-hemorrhage slices.

    ``coverage`` is the brain area per slice and ``hemorrhage`` the hemorrhage area per slice.
    Slices whose brain area is at least ``min_fraction`` of the largest one span the range to
    cover; up to a third of the picks (at least one) are the slices with the most hemorrhage,
    the rest are spaced evenly over the brain. Returned sorted, without duplicates.
    """
    coverage = np.asarray(coverage, dtype=float)
    hemorrhage = np.asarray(hemorrhage, dtype=float)
    n_total = coverage.size
    n_slices = max(1, int(n_slices))
    if n_total == 0:
        return []
    if coverage.max() > 0:
        brain = np.flatnonzero(coverage >= min_fraction * coverage.max())
        lo, hi = int(brain[0]), int(brain[-1])
    else:
        lo, hi = 0, n_total - 1
    chosen: set[int] = set()
    bleeding = [int(i) for i in np.argsort(-hemorrhage, kind="stable") if hemorrhage[i] > 0]
    chosen.update(bleeding[: max(1, n_slices // 3)])
    candidates = range(lo, hi + 1)
    if len(chosen | set(candidates)) <= n_slices:
        return sorted(chosen | set(candidates))
    remaining = n_slices - len(chosen)
    targets = np.linspace(lo, hi, remaining) if remaining > 1 else [(lo + hi) / 2]
    for target in targets[:remaining]:
        # Each target takes the closest brain slice not taken yet.
        free = [c for c in candidates if c not in chosen]
        chosen.add(min(free, key=lambda c: (abs(c - target), c)))
    return sorted(chosen)


def plot_segmentation_mosaic(
    ct_file: str | os.PathLike,
    dseg_file: str | os.PathLike,
    brain_mask_file: str | os.PathLike | None,
    out_file: str | os.PathLike,
    n_slices: int = 12,
    volumes: Mapping[str, float] | None = None,
    radiological: bool = True,
    n_cols: int = 6,
) -> Path:
    """Axial mosaic of the CT with the label map overlaid; write it as SVG to ``out_file``.

    Parameters
    ----------
    ct_file, dseg_file, brain_mask_file : path
        CT (HU), label map and brain mask, all on the scan's own grid (any orientation; the
        mask may be ``None``).
    out_file : path
        The ``.svg`` to write (atomically).
    n_slices : int
        Number of axial slices: spread over the brain, including the slices with the most
        hemorrhage (see :func:`select_slices`).
    volumes : dict, optional
        Volumes (mL) by column of :data:`~ichseg.pipeline.labels.VOLUME_COLUMNS`, shown in the
        legend.
    radiological : bool
        Patient's right on the left of the image (default, as on CT consoles); ``False`` gives
        neurological convention. Either way the panels carry R/L markers.
    n_cols : int
        Panels per row.
    """
    ct_img = _RASVolume(ct_file)
    dseg_img = _RASVolume(dseg_file)
    _same_grid(ct_img, dseg_img, "label map", "CT")
    labels = dseg_img.array()
    if not np.issubdtype(labels.dtype, np.integer):
        labels = np.rint(labels).astype(np.int16)
    if brain_mask_file is not None:
        mask_img = _RASVolume(brain_mask_file)
        _same_grid(ct_img, mask_img, "brain mask", "CT")
        mask = mask_img.array() > 0.5
    else:
        mask = np.zeros(ct_img.shape, bool)
    vox = _zooms(ct_img.affine)

    if mask.any():
        region = mask
    else:  # the head
        region = np.stack([ct_img.axial(k) > -300 for k in range(ct_img.shape[2])], axis=-1)
    hem = np.isin(labels, HEMORRHAGE_INDICES)
    if not hem.any():
        hem = labels > 0  # e.g. oedema only
    slices = select_slices(
        region.sum(axis=(0, 1)), hem.sum(axis=(0, 1)), n_slices
    ) or [ct_img.shape[2] // 2]
    del hem

    margin = [int(math.ceil(15.0 / v)) for v in vox]  # brain + skull
    box = _bbox(region | (labels > 0), margin)
    crop = (box[0], box[1])
    height_mm = (box[1].stop - box[1].start) * vox[1]
    width_mm = (box[0].stop - box[0].start) * vox[0]
    zoom = _display_zoom((box[1].stop - box[1].start, box[0].stop - box[0].start), (vox[1], vox[0]))

    n = len(slices)
    n_cols = max(1, min(n_cols, n))
    n_rows = int(math.ceil(n / n_cols))
    panel_w = 1.75
    panel_h = panel_w * height_mm / width_mm
    legend_h = 0.95
    fig_w, fig_h = n_cols * panel_w, n_rows * panel_h + legend_h
    with matplotlib.rc_context(_SVG_RC):
        fig = Figure(figsize=(fig_w, fig_h), facecolor="black")
        rasters = {}
        left_marker, right_marker = ("R", "L") if radiological else ("L", "R")
        for pos, k in enumerate(slices):
            row, col = divmod(pos, n_cols)
            ax = fig.add_axes(
                (col * panel_w / fig_w, 1 - (row + 1) * panel_h / fig_h, panel_w / fig_w, panel_h / fig_h)
            )
            extent = (0.0, width_mm, 0.0, height_mm)
            gid = f"ichseg-slice-{pos}"
            rasters[gid] = _label_panel(ax, ct_img, labels, k, crop, zoom, extent, radiological, gid)
            plane = _display(mask[crop + (k,)], radiological).astype(np.float32)
            if plane.any():
                plane = _resample_display(plane, zoom)
                _draw_contour(ax, plane, 0.5, MASK_COLOR, extent, 0.6)
            _orientation_markers(ax, left_marker, right_marker)
            _panel_text(ax, 0.02, 0.02, _slice_caption(ct_img, k))
        _mosaic_legend(fig, legend_h / fig_h, volumes, vox, radiological)
        return _save_svg(fig, out_file, rasters)


def _label_handles(volumes: Mapping[str, Any]) -> list[Patch]:
    """Legend entries of the label colours, with their volumes where given."""
    handles = []
    for lab in FOREGROUND_LABELS:
        text = f"{lab.abbreviation}: {lab.name}"
        vol = _fmt_ml(volumes.get(lab.volume_column))
        if vol is not None:
            text += f"  ({vol})"
        handles.append(Patch(facecolor=lab.color, edgecolor="none", alpha=0.9, label=text))
    return handles


def comparison_slices(hemorrhage: Sequence[float], disagreement: Sequence[float], n_slices: int) -> list[int]:
    """Axial slices that show how label maps differ: half (at least one) those with the most
    hemorrhage in any map, the rest those where the maps disagree on the most voxels; sorted."""
    chosen: list[int] = []
    for area, share in ((hemorrhage, max(1, n_slices // 2)), (disagreement, n_slices)):
        area = np.asarray(area, dtype=float)
        for k in np.argsort(-area, kind="stable"):
            if len(chosen) >= min(share, n_slices) or area[k] <= 0:
                break
            if int(k) not in chosen:
                chosen.append(int(k))
    return sorted(chosen)


def plot_label_map_comparison(
    ct_file: str | os.PathLike,
    label_maps: Mapping[str, str | os.PathLike],
    out_file: str | os.PathLike,
    n_slices: int = 4,
    captions: Mapping[str, str] | None = None,
    radiological: bool = True,
) -> Path:
    """Several label maps of one CT side by side (a row per map, the same axial slices in
    each; :func:`comparison_slices`); write it as SVG to ``out_file``.

    Parameters
    ----------
    ct_file : path
        The CT (HU); every label map must be on its grid.
    label_maps : dict
        Label map by name (for example, one per setting of a run), in the order of the rows.
    captions : dict, optional
        A line of text per name (for example, its volumes), shown under the name.
    """
    ct_img = _RASVolume(ct_file)
    if not label_maps:
        raise ValueError("no label maps to compare")
    maps = {}
    for name, path in label_maps.items():
        img = _RASVolume(path)
        _same_grid(ct_img, img, f"label map of {name}", "CT")
        labels = img.array()
        maps[name] = labels if np.issubdtype(labels.dtype, np.integer) else np.rint(labels).astype(np.int16)
    stack = list(maps.values())
    hemorrhage = np.any([np.isin(labels, HEMORRHAGE_INDICES) for labels in stack], axis=0)
    disagree = np.any([labels != stack[0] for labels in stack[1:]], axis=0) if len(stack) > 1 else hemorrhage
    slices = comparison_slices(hemorrhage.sum(axis=(0, 1)), disagree.sum(axis=(0, 1)), n_slices)
    if not slices:
        slices = [ct_img.shape[2] // 2]
    vox = _zooms(ct_img.affine)
    head = _largest_component(np.stack([ct_img.axial(k) > -300 for k in slices], axis=-1).any(axis=-1))
    box = _bbox(head | np.any([labels > 0 for labels in stack], axis=(0, 3)),
                [int(math.ceil(5.0 / v)) for v in vox[:2]])
    crop = (box[0], box[1])
    height_mm = (box[1].stop - box[1].start) * vox[1]
    width_mm = (box[0].stop - box[0].start) * vox[0]
    zoom = _display_zoom((box[1].stop - box[1].start, box[0].stop - box[0].start), (vox[1], vox[0]))
    panel_w = 1.75
    panel_h = panel_w * height_mm / width_mm
    legend_h = 0.5
    fig_w, fig_h = len(slices) * panel_w, len(maps) * panel_h + legend_h
    left_marker, right_marker = ("R", "L") if radiological else ("L", "R")
    with matplotlib.rc_context(_SVG_RC):
        fig = Figure(figsize=(fig_w, fig_h), facecolor="black")
        rasters = {}
        for row, (name, labels) in enumerate(maps.items()):
            for col, k in enumerate(slices):
                ax = fig.add_axes((col * panel_w / fig_w, 1 - (row + 1) * panel_h / fig_h,
                                   panel_w / fig_w, panel_h / fig_h))
                gid = f"ichseg-compare-{row}-{col}"
                rasters[gid] = _label_panel(ax, ct_img, labels, k, crop, zoom, (0.0, width_mm, 0.0, height_mm),
                                            radiological, gid)
                _orientation_markers(ax, left_marker, right_marker)
                if row == len(maps) - 1:
                    _panel_text(ax, 0.02, 0.02, _slice_caption(ct_img, k))
                if col == 0:
                    text = name + (f"\n{captions[name]}" if captions and captions.get(name) else "")
                    _panel_text(ax, 0.02, 0.98, text, size=6.0, va="top")
        ax = fig.add_axes((0, 0, 1, legend_h / fig_h))
        ax.set_axis_off()
        legend = ax.legend(handles=_label_handles({}), loc="center", ncol=len(FOREGROUND_LABELS), frameon=False,
                           fontsize=6.5, handlelength=1.2, columnspacing=1.2)
        for text in legend.get_texts():
            text.set_color("white")
        return _save_svg(fig, out_file, rasters)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected part of a 2D mask: the head, without the head holder or the table."""
    components, n = ndi.label(mask)
    if n <= 1:
        return mask
    return components == 1 + int(np.argmax(ndi.sum_labels(mask, components, range(1, n + 1))))


def _label_panel(ax, ct_img: _RASVolume, labels: np.ndarray, k: int, crop, zoom, extent, radiological: bool,
                 gid: str) -> np.ndarray:
    """Draw axial slice ``k`` of the CT (cropped) with ``labels`` blended in; returns its raster."""
    _plain_axes(ax)
    gray = _window(_display(ct_img.axial(k)[crop], radiological))
    rgb = _compose(gray, _display(labels[crop + (k,)], radiological))
    rgb = np.clip(_resample_display(rgb, zoom), 0, 1)
    _draw_panel(ax, rgb, extent, gid)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    return rgb


def _slice_caption(ct_img: _RASVolume, k: int) -> str:
    centre = ct_img.affine @ np.array([ct_img.shape[0] / 2, ct_img.shape[1] / 2, k, 1.0])
    return f"slice {ct_img.file_slice(k)}  z {centre[2]:+.0f} mm"


def _fmt_ml(value: Any) -> str | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return f"{value:.1f} mL" if value >= 0.05 or value == 0 else f"{value:.2f} mL"


def _mosaic_legend(fig: Figure, height: float, volumes, vox, radiological: bool) -> None:
    volumes = volumes or {}
    handles = _label_handles(volumes)
    mask_text = "brain mask outline"
    brain = _fmt_ml(volumes.get(BRAIN_VOLUME_COLUMN))
    if brain is not None:
        mask_text += f"  ({brain})"
    handles.append(Line2D([0], [0], color=MASK_COLOR, lw=1.2, label=mask_text))
    ax = fig.add_axes((0, 0, 1, height))
    ax.set_axis_off()
    legend = ax.legend(
        handles=handles, loc="upper center", ncol=3, frameon=False, fontsize=7.5,
        handlelength=1.4, columnspacing=1.8, bbox_to_anchor=(0.5, 1.0),
    )
    for text in legend.get_texts():
        text.set_color("white")
    total = _fmt_ml(volumes.get(TOTAL_HEMORRHAGE_COLUMN))
    parts = []
    if total is not None:
        hem = "+".join(lab.abbreviation for lab in LABELS if lab.index in HEMORRHAGE_INDICES)
        parts.append(f"Total hemorrhage ({hem}): {total}")
    convention = (
        "Radiological convention (patient's right on image left)"
        if radiological
        else "Neurological convention (patient's right on image right)"
    )
    parts += [
        convention,
        f"window {BRAIN_WINDOW_HU[0]:.0f}-{BRAIN_WINDOW_HU[1]:.0f} HU",
        "voxels " + " x ".join(f"{v:.2f}" for v in vox) + " mm",
    ]
    ax.text(0.5, 0.08, "  \u00b7  ".join(parts), ha="center", va="bottom", color="#cbd5e1", fontsize=7)


# --------------------------------------------------------------------------------------------
# Registration check
# --------------------------------------------------------------------------------------------


def _template_edges(template: np.ndarray, vox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask of the (skull-stripped) template and a smoothed 'is CSF' map inside it."""
    brain = ndi.binary_fill_holes(np.abs(template) > 1e-3)
    brain = ndi.binary_opening(brain, iterations=1)
    smooth = ndi.gaussian_filter(template.astype(np.float32), sigma=1.2 / vox)
    # CSF (< ~15 HU) away from the brain surface: ventricles, large cisterns and sulci.
    inner = ndi.binary_erosion(brain, iterations=max(1, int(round(6.0 / float(vox.min())))))
    csf = np.where(inner, 15.0 - smooth, -1.0)  # contour at 0 = 15 HU iso-line, inside only
    return brain, csf


def plot_registration_check(
    template_ct_file: str | os.PathLike,
    template_file: str | os.PathLike,
    out_file: str | os.PathLike,
    n_cuts: int = 7,
    radiological: bool = True,
) -> Path:
    """The CT in template space with the template's edges on top; write it as SVG.

    Three rows (axial, coronal, sagittal) of ``n_cuts`` cuts each, spread over the template
    brain. Drawn over the registered CT (brain window): the template's brain outline (red) and
    the 15 HU iso-line of the smoothed template inside the brain (yellow: ventricles, large
    CSF spaces). Both images must be on the template grid.
    """
    ct_img = _RASVolume(template_ct_file)
    tpl_img = _RASVolume(template_file)
    _same_grid(tpl_img, ct_img, "registered CT", "template")
    ct = ct_img.array(np.float32)
    template = tpl_img.array(np.float32)
    vox = _zooms(tpl_img.affine)
    brain, csf = _template_edges(template, vox)
    margin = [int(math.ceil(6.0 / v)) for v in vox]
    box = _bbox(brain, margin)

    # (name, axis cut through, horizontal axis, vertical axis, flip horizontally, markers)
    lr = ("R", "L") if radiological else ("L", "R")
    views = [
        ("axial", 2, 0, 1, radiological, lr),
        ("coronal", 1, 0, 2, radiological, lr),
        ("sagittal", 0, 1, 2, False, ("P", "A")),
    ]
    n_cuts = max(1, int(n_cuts))
    panel_w = 1.5
    fig_w = n_cuts * panel_w
    heights = []
    for _, _, h_axis, v_axis, _, _ in views:
        w_mm = (box[h_axis].stop - box[h_axis].start) * vox[h_axis]
        h_mm = (box[v_axis].stop - box[v_axis].start) * vox[v_axis]
        heights.append(panel_w * h_mm / w_mm)
    footer = 0.3
    fig_h = sum(heights) + footer
    with matplotlib.rc_context(_SVG_RC):
        fig = Figure(figsize=(fig_w, fig_h), facecolor="black")
        rasters = {}
        top = fig_h
        for (name, axis, h_axis, v_axis, flip, markers), panel_h in zip(views, heights, strict=True):
            top -= panel_h
            span = box[axis]
            first, last = span.start + margin[axis], span.stop - 1 - margin[axis]
            cuts = np.unique(np.rint(first + (last - first) * np.linspace(0.15, 0.85, n_cuts)).astype(int))
            w_mm = (box[h_axis].stop - box[h_axis].start) * vox[h_axis]
            h_mm = (box[v_axis].stop - box[v_axis].start) * vox[v_axis]
            n_px = (box[v_axis].stop - box[v_axis].start, box[h_axis].stop - box[h_axis].start)
            zoom = _display_zoom(n_px, (vox[v_axis], vox[h_axis]), MAX_REGISTRATION_PANEL_PX)
            extent = (0.0, w_mm, 0.0, h_mm)
            for col, cut in enumerate(cuts):
                index: list[Any] = [slice(None)] * 3
                index[axis] = int(cut)
                index[h_axis] = box[h_axis]
                index[v_axis] = box[v_axis]
                index = tuple(index)

                def plane(volume, index=index, transpose=h_axis > v_axis):
                    data = volume[index]
                    return data.T if transpose else data

                ax = fig.add_axes((col * panel_w / fig_w, top / fig_h, panel_w / fig_w, panel_h / fig_h))
                _plain_axes(ax)
                gray = _window(_display(plane(ct), flip))
                rgb = np.clip(_resample_display(_compose(gray, None), zoom), 0, 1)
                gid = f"ichseg-{name}-{col}"
                _draw_panel(ax, rgb, extent, gid)
                rasters[gid] = rgb
                for field, level, color in (
                    (_display(plane(brain).astype(np.float32), flip), 0.5, TEMPLATE_OUTLINE_COLOR),
                    (_display(plane(csf), flip), 0.0, TEMPLATE_CSF_COLOR),
                ):
                    _draw_contour(ax, _resample_display(field, zoom), level, color, extent, 0.55,
                                  min_length_mm=15.0)
                ax.set_xlim(0, w_mm)
                ax.set_ylim(0, h_mm)
                _orientation_markers(ax, *markers, size=6.5)
                world = tpl_img.affine[:3, axis] * cut + tpl_img.affine[:3, 3]
                coord = "xyz"[axis]
                _panel_text(ax, 0.02, 0.02, f"{coord} = {world[axis]:+.0f}", 6)
                if col == 0:
                    _panel_text(ax, 0.02, 0.98, name, 7, va="top", fontweight="bold")
        convention = "radiological" if radiological else "neurological"
        fig.text(
            0.5, 0.5 * footer / fig_h,
            f"CT in template space (window {BRAIN_WINDOW_HU[0]:.0f}-{BRAIN_WINDOW_HU[1]:.0f} HU)"
            f"  \u00b7  template brain outline (red), template CSF/ventricle edges (yellow)"
            f"  \u00b7  {convention} convention; coordinates in template mm",
            ha="center", va="center", color="#cbd5e1", fontsize=6.5,
        )
        return _save_svg(fig, out_file, rasters)


# --------------------------------------------------------------------------------------------
# Group report
# --------------------------------------------------------------------------------------------

def plot_group_volumes(table, out: io.StringIO) -> bool:
    """Strip plot of the volume columns of the scans with volumes; False if there are none.

    One row per class (total hemorrhage first), one dot per scan; dots of scans whose status
    is not ``ok`` are grey, scans with a QC flag get a red ring.
    """
    columns = [TOTAL_HEMORRHAGE_COLUMN] + [lab.volume_column for lab in FOREGROUND_LABELS]
    columns = [c for c in columns if c in table.columns]
    values = {c: table[c].to_numpy(dtype=float) for c in columns}
    if not columns or not any(np.isfinite(v).any() for v in values.values()):
        return False
    if "status" in table:
        statuses = table["status"].fillna(MISSING).astype(str).str.strip().str.lower().to_numpy()
    else:
        statuses = np.full(len(table), STATUS_OK)
    flagged = table["_flagged"].to_numpy(bool)
    colors = {lab.volume_column: lab.color for lab in FOREGROUND_LABELS}
    colors[TOTAL_HEMORRHAGE_COLUMN] = "#111827"
    names = {lab.volume_column: lab.abbreviation for lab in FOREGROUND_LABELS}
    names[TOTAL_HEMORRHAGE_COLUMN] = "Total hemorrhage"
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.22, 0.22, len(table))  # the same per scan in every row
    many = len(table) * len(columns) > 3000  # rasterize the dots of big studies
    row_h, top, bottom = 0.55, 0.15, 0.55
    fig_h = row_h * len(columns) + top + bottom
    with matplotlib.rc_context(_SVG_RC):
        fig = Figure(figsize=(8.0, fig_h), facecolor="white")
        ax = fig.add_axes((0.2, bottom / fig_h, 0.77, row_h * len(columns) / fig_h))
        for row, column in enumerate(columns):
            v = values[column]
            have = np.isfinite(v)
            yy = len(columns) - 1 - row
            ok = have & (statuses == STATUS_OK)
            other = have & ~ok
            ax.scatter(v[ok], yy + jitter[ok], s=14, alpha=0.75, linewidths=0, color=colors[column],
                       rasterized=many)
            if other.any():
                ax.scatter(v[other], yy + jitter[other], s=14, alpha=0.75, linewidths=0,
                           color="#9ca3af", rasterized=many)
            ring = have & flagged
            if ring.any():
                ax.scatter(v[ring], yy + jitter[ring], s=42, facecolors="none", edgecolors="#dc2626",
                           linewidths=1.0, rasterized=many)
            if ok.sum() >= 5:
                q1, med, q3 = np.percentile(v[ok], [25, 50, 75])
                ax.plot([q1, q3], [yy, yy], color="#374151", lw=3, alpha=0.35, solid_capstyle="butt")
                ax.plot([med, med], [yy - 0.3, yy + 0.3], color="#111827", lw=1.2)
        ax.set_yticks(
            range(len(columns)), [f"{names[c]}\n{c}" for c in reversed(columns)], fontsize=8
        )
        ax.set_ylim(-0.6, len(columns) - 0.4)
        ax.set_xlabel("Volume (mL)", fontsize=8.5)
        ax.tick_params(axis="x", labelsize=8)
        ax.tick_params(axis="y", length=0)
        ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
        ax.grid(axis="x", color="#e5e7eb", lw=0.6)
        ax.set_axisbelow(True)
        for spine in ("top", "right", "left"):
            ax.spines[spine].set_visible(False)
        handles = []
        if (statuses != STATUS_OK).any() and any((np.isfinite(v) & (statuses != STATUS_OK)).any() for v in values.values()):
            handles.append(Line2D([], [], ls="", marker="o", color="#9ca3af", label="status not ok"))
        if flagged.any():
            handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="#dc2626", label="QC flag"))
        if handles:
            ax.legend(handles=handles, loc="lower right", fontsize=7.5, frameon=False)
        fig.savefig(out, format="svg", metadata={"Date": None})
    return True


def plot_courses(table, out: io.StringIO, most: int = 24) -> bool:
    """Volume over time per subject with more than one scan (small multiples, one line per
    class); the x axis is the hours since the first scan, else the scan's rank. False if no
    subject has two scans with volumes."""
    columns = [c for c in (TOTAL_HEMORRHAGE_COLUMN, "iph_ml", "ivh_ml") if c in table.columns]
    if "participant_id" not in table or not columns:
        return False
    ok = table[table["status"] == STATUS_OK] if "status" in table else table
    groups = [(pid, scans) for pid, scans in ok.groupby("participant_id", sort=True) if len(scans) > 1]
    if not groups:
        return False
    groups = groups[:most]
    colors = {lab.volume_column: lab.color for lab in FOREGROUND_LABELS}
    colors[TOTAL_HEMORRHAGE_COLUMN] = "#111827"
    ncol = min(4, len(groups))
    nrow = (len(groups) + ncol - 1) // ncol
    with matplotlib.rc_context(_SVG_RC):
        fig = Figure(figsize=(2.2 * ncol + 0.6, 1.9 * nrow + 0.5), facecolor="white")
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for ax, (pid, scans) in zip(axes.ravel(), groups):
            hours = _as_float(scans.get("hours_since_first_scan"))
            timed = hours is not None and np.isfinite(hours).all()
            order = np.argsort(hours, kind="stable") if timed else np.arange(len(scans))
            x = hours[order] if timed else np.arange(len(scans))
            for column in columns:
                y = _as_float(scans[column])[order]
                ax.plot(x, y, marker="o", ms=3, lw=1.2, color=colors.get(column, "#6b7280"), label=column)
            ax.set_title(str(pid), fontsize=8)
            ax.set_xlabel("hours since first scan" if timed else "scan (by session)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.set_ylim(bottom=0)
            for spine in ("top", "right"):
                ax.spines[spine].set_visible(False)
        for ax in axes.ravel()[len(groups):]:
            ax.set_visible(False)
        axes[0, 0].set_ylabel("mL", fontsize=7)
        axes[0, 0].legend(fontsize=6.5, frameon=False)
        fig.tight_layout()
        fig.savefig(out, format="svg", metadata={"Date": None})
    return True


def _as_float(values) -> np.ndarray | None:
    """A table column as floats (``n/a`` and text as NaN); None when the column is absent."""
    if values is None:
        return None
    import pandas as pd

    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


