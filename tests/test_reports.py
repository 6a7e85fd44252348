"""Tests of the visual reports: figures, per-scan HTML, group HTML, and the ScanReport interface."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ichseg.pipeline.figures import (
    comparison_slices,
    plot_label_map_comparison,
    plot_registration_check,
    plot_segmentation_mosaic,
    select_slices,
)
from ichseg.pipeline.labels import FOREGROUND_LABELS, VOLUME_COLUMNS
from ichseg.pipeline.naming import derivative_relpath
from ichseg.pipeline.phantom import make_head_phantom
from ichseg.pipeline.reports import GROUP_REPORT, write_group_report, write_scan_report

SVG_NS = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"


# -------------------------------------------------------------------------------------------
# Fixtures: a small synthetic scan on disk
# -------------------------------------------------------------------------------------------


def _write_scan(folder: Path, voxel_size=(2.0, 2.0, 5.0), shape=(96, 96, 20), canonical=False):
    """Phantom CT, label map (IPH + oedema ring + a little IVH) and brain mask as NIfTI."""
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_head_phantom(shape=shape, voxel_size=voxel_size, hemorrhage_ml=20.0)
    labels = np.zeros(shape, np.uint8)
    labels[phantom.hemorrhage_mask] = 1
    from scipy import ndimage as ndi

    ring = ndi.binary_dilation(phantom.hemorrhage_mask, iterations=1) & ~phantom.hemorrhage_mask
    labels[ring & phantom.brain_mask] = 3
    centre = np.array(np.nonzero(phantom.brain_mask)).mean(axis=1).astype(int)
    labels[centre[0] - 1 : centre[0] + 1, centre[1] - 1 : centre[1] + 1, centre[2]] = 4
    images = {
        "ct": nib.Nifti1Image(phantom.data, phantom.affine),
        "dseg": nib.Nifti1Image(labels, phantom.affine),
        "mask": nib.Nifti1Image(phantom.brain_mask.astype(np.uint8), phantom.affine),
    }
    paths = {}
    for name, img in images.items():
        if canonical:
            img = nib.as_closest_canonical(img)
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(img, paths[name])
    return paths, phantom


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    paths, phantom = _write_scan(tmp_path_factory.mktemp("scan"))
    return paths


@pytest.fixture(scope="module")
def template_pair(tmp_path_factory):
    """A 'template' (skull-stripped phantom) and a 'registered CT' (the phantom) on one grid."""
    folder = tmp_path_factory.mktemp("template")
    phantom = make_head_phantom(shape=(64, 72, 56), voxel_size=(2.5, 2.5, 2.5), hemorrhage_ml=10.0)
    template = np.where(phantom.brain_mask, phantom.data, 0).astype(np.float32)
    paths = {"template": folder / "template.nii.gz", "template_ct": folder / "template_ct.nii.gz"}
    nib.save(nib.Nifti1Image(template, phantom.affine), paths["template"])
    nib.save(nib.Nifti1Image(phantom.data.astype(np.float32), phantom.affine), paths["template_ct"])
    return paths


VOLUMES = {"iph_ml": 20.0, "eah_ml": 0.0, "oed_ml": 3.25, "ivh_ml": 0.04, "hemorrhage_ml": 20.04,
           "brain_ml": 1480.5, "status": "ok"}
#: Columns a per-scan volume table carries besides the volumes (see pipeline/qc.py).
QC_COLUMNS = {"registration_dice": 0.91, "registration_similarity": 0.62, "flag_brain_volume": True,
              "flag_registration": False, "n_warnings": 2}
METADATA = {
    "iph_ml": {"Description": "Volume of intraparenchymal hemorrhage (IPH)", "Units": "mL"},
    "Sources": ["/data/bids/sub-01/ses-1/anat/sub-01_ses-1_ct.nii.gz"],
    "Model": {"model": "blastct-v1", "n_networks": 1, "weights": ["/w/model_1.pt"],
              "weights_sha256": ["95f76e8b16fe42b6aa49388cb798e282c55cd70191544f4417445bb87803f99f"]},
    "SoftwareVersions": {"ichseg": "0.1.0", "nibabel": "5.4.2"},
    "Warnings": ["Slice spacing is uneven (sidecar warning)"],
    "Registration": {"Transform": "Rigid", "Tool": "ANTsPy"},
}


def _svg_images(svg_path: Path):
    """Decoded panel rasters of an SVG, each flipped as the SVG transform displays it."""
    from PIL import Image

    root = ET.parse(svg_path).getroot()
    panels = []
    for element in root.iter(f"{SVG_NS}image"):
        href = element.get(XLINK_HREF)
        assert href.startswith("data:image/jpeg;base64,")
        array = np.asarray(Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))).convert("RGB"))
        scale = re.match(r"matrix\(([-\d.e]+) 0 0 ([-\d.e]+)", element.get("transform"))
        sx, sy = float(scale.group(1)), float(scale.group(2))
        if sy < 0:
            array = array[::-1]
        width = float(element.get("width")) * abs(sx)
        height = float(element.get("height")) * abs(sy)
        panels.append({"rgb": array, "width": width, "height": height})
    return panels


# -------------------------------------------------------------------------------------------
# Slice selection and figures
# -------------------------------------------------------------------------------------------


def test_select_slices_covers_brain_and_includes_hemorrhage():
    coverage = np.r_[np.zeros(5), np.linspace(10, 100, 20), np.linspace(100, 10, 15), np.zeros(5)]
    hemorrhage = np.zeros(coverage.size)
    hemorrhage[[31, 32, 33]] = [50, 300, 120]
    picked = select_slices(coverage, hemorrhage, 12)
    assert len(picked) == 12 and picked == sorted(set(picked))
    assert {32, 33, 31} <= set(picked)  # the slices with the most hemorrhage (n // 3 = 4 allowed)
    assert min(picked) <= 7 and max(picked) >= 37  # spread over the whole brain
    assert all(coverage[i] > 0 for i in picked)


def test_select_slices_few_slices_and_no_brain():
    coverage = np.r_[0, 5, 9, 9, 5, 0]
    assert select_slices(coverage, np.zeros(6), 12) == [1, 2, 3, 4]
    assert select_slices(np.zeros(4), np.zeros(4), 2) == [0, 3]
    assert select_slices([], [], 3) == []


def test_segmentation_mosaic(scan, tmp_path):
    out = plot_segmentation_mosaic(
        scan["ct"], scan["dseg"], scan["mask"], tmp_path / "seg.svg", n_slices=8, volumes=VOLUMES
    )
    assert out == tmp_path / "seg.svg" and out.stat().st_size > 20_000
    assert out.stat().st_size < 300_000
    text = out.read_text()
    ET.fromstring(text)  # well-formed XML
    panels = _svg_images(out)
    assert len(panels) == 8
    for panel in panels:  # real image content, not a blank panel
        assert panel["rgb"].std() > 20
    # The legend names every class with its volume, and the convention is stated.
    for lab in FOREGROUND_LABELS:
        assert lab.name in text
    assert "20.0 mL" in text and "3.2 mL" in text
    assert "Radiological convention" in text
    assert ">R<" in text and ">L<" in text
    # Some panel shows the IPH colour.
    assert any(_red_pixels(p["rgb"]).sum() > 10 for p in panels)
    # No leftover temporary file from the atomic write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.svg"]


def _red_pixels(rgb):
    rgb = rgb.astype(int)
    return (rgb[..., 0] - rgb[..., 1] > 60) & (rgb[..., 0] - rgb[..., 2] > 60)


@pytest.mark.parametrize("radiological", [True, False])
def test_mosaic_orientation_does_not_depend_on_storage(tmp_path, radiological):
    """The phantom's hematoma is in the LEFT hemisphere: image right in radiological convention.

    The same scan stored LAS (scanner-like) and RAS must give the same picture.
    """
    sides = []
    for canonical in (False, True):
        paths, _ = _write_scan(tmp_path / f"c{canonical}", canonical=canonical)
        out = plot_segmentation_mosaic(
            paths["ct"], paths["dseg"], paths["mask"], tmp_path / f"c{canonical}.svg",
            n_slices=4, radiological=radiological,
        )
        columns = []
        for panel in _svg_images(out):
            red = _red_pixels(panel["rgb"])
            if red.sum() > 10:
                columns.append(np.nonzero(red)[1].mean() / red.shape[1])
        assert columns
        sides.append(np.mean(columns))
    expected_right = radiological
    for side in sides:
        assert (side > 0.5) == expected_right
    assert abs(sides[0] - sides[1]) < 0.05
    assert ("Radiological" if radiological else "Neurological") in out.read_text()


def test_mosaic_keeps_physical_aspect_ratio(tmp_path):
    """Anisotropic voxels: the same head on 2x2 mm and 1x2 mm pixels looks the same."""
    ratios = []
    for name, voxel, shape in (("iso", (2.0, 2.0, 5.0), (96, 96, 20)), ("aniso", (1.0, 2.0, 5.0), (192, 96, 20))):
        paths, _ = _write_scan(tmp_path / name, voxel_size=voxel, shape=shape)
        out = plot_segmentation_mosaic(
            paths["ct"], paths["dseg"], paths["mask"], tmp_path / f"{name}.svg", n_slices=2
        )
        panel = _svg_images(out)[0]
        ratios.append(panel["width"] / panel["height"])
        # Display pixels are square: raster shape and displayed size have the same ratio.
        rows, cols = panel["rgb"].shape[:2]
        assert panel["width"] / panel["height"] == pytest.approx(cols / rows, rel=0.03)
    assert ratios[0] == pytest.approx(ratios[1], rel=0.05)
    # The head is longer (A-P) than wide (L-R).
    assert ratios[0] < 0.95


def test_mosaic_rejects_images_on_other_grids(scan, tmp_path):
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), other)
    with pytest.raises(ValueError, match="same grid"):
        plot_segmentation_mosaic(scan["ct"], other, scan["mask"], tmp_path / "x.svg")
    assert not (tmp_path / "x.svg").exists()


def test_comparison_slices_show_the_blood_and_where_maps_differ():
    hemorrhage = [0, 5, 9, 0, 0, 0, 0]
    disagreement = [0, 0, 1, 0, 7, 3, 0]
    assert comparison_slices(hemorrhage, disagreement, 4) == [1, 2, 4, 5]
    assert comparison_slices(hemorrhage, disagreement, 2) == [2, 4]
    assert comparison_slices([0] * 5, [0] * 5, 3) == []  # nothing to show: the caller picks a slice


def test_label_map_comparison_has_a_row_per_map(scan, tmp_path):
    labels = np.asanyarray(nib.load(str(scan["dseg"])).dataobj)
    smaller = tmp_path / "smaller.nii.gz"
    nib.save(nib.Nifti1Image(np.where(labels == 1, 0, labels).astype(np.uint8), nib.load(str(scan["dseg"])).affine),
             smaller)
    out = plot_label_map_comparison(scan["ct"], {"default": scan["dseg"], "no IPH": smaller},
                                    tmp_path / "compare.svg", n_slices=3,
                                    captions={"default": "hemorrhage 20.04 mL"})
    text = out.read_text()
    panels = _svg_images(out)
    assert len(panels) == 2 * 3  # two maps, the same three slices each
    # the first row shows the IPH on every slice it chose (the hemorrhage's), the second none
    assert all(_red_pixels(p["rgb"]).sum() > 10 for p in panels[:3])
    assert not any(_red_pixels(p["rgb"]).sum() > 10 for p in panels[3:])
    assert "default" in text and "no IPH" in text and "hemorrhage 20.04 mL" in text
    # a head holder beside the head does not widen the panels
    ct = nib.load(str(scan["ct"]))
    hu = np.asanyarray(ct.dataobj).copy()
    hu[:3] = 100.0
    with_holder = tmp_path / "holder.nii.gz"
    nib.save(nib.Nifti1Image(hu, ct.affine), with_holder)
    again = _svg_images(plot_label_map_comparison(with_holder, {"default": scan["dseg"]}, tmp_path / "h.svg",
                                                  n_slices=3))
    aspect = again[0]["height"] / again[0]["width"]
    assert aspect == pytest.approx(panels[0]["height"] / panels[0]["width"], rel=0.01)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), other)
    with pytest.raises(ValueError, match="label map of other"):
        plot_label_map_comparison(scan["ct"], {"default": scan["dseg"], "other": other}, tmp_path / "x.svg")
    assert not (tmp_path / "x.svg").exists()


def test_mosaic_without_mask_or_labels(scan, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    ct = nib.load(scan["ct"])
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), empty)
    out = plot_segmentation_mosaic(scan["ct"], empty, None, tmp_path / "empty.svg", n_slices=6)
    assert len(_svg_images(out)) == 6


def test_registration_check(template_pair, tmp_path):
    out = plot_registration_check(
        template_pair["template_ct"], template_pair["template"], tmp_path / "reg.svg", n_cuts=5
    )
    text = out.read_text()
    ET.fromstring(text)
    assert 10_000 < out.stat().st_size < 300_000
    panels = _svg_images(out)
    assert len(panels) == 15  # 3 views x 5 cuts
    assert all(p["rgb"].std() > 10 for p in panels)
    for view in ("axial", "coronal", "sagittal"):
        assert view in text
    # The template's brain outline is drawn (red lines).
    assert text.count("stroke: #ff3b30") >= 15


# -------------------------------------------------------------------------------------------
# HTML
# -------------------------------------------------------------------------------------------


class _Collector(HTMLParser):
    """Collect tags, attributes and text; check that containers are closed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text = []
        self.tags = []
        self.attrs = []
        self.open = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))
        if tag in ("html", "head", "body", "main", "table", "figure", "ul", "nav", "style"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in ("html", "head", "body", "main", "table", "figure", "ul", "nav", "style"):
            assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
            self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.open == []
    return parser


def _assert_self_contained(path: Path, parser: _Collector):
    raw = path.read_text(encoding="utf-8")
    assert 'src="http' not in raw and "src='http" not in raw
    assert 'href="http' not in raw and 'href="//' not in raw
    assert "<script" not in raw.lower()
    assert "@import" not in raw
    for tag, attrs in parser.attrs:
        assert tag not in ("link", "script", "iframe")
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name) or ""
            assert not re.match(r"^(https?:)?//", value), (tag, name, value)


def test_scan_report(scan, template_pair, tmp_path):
    seg = plot_segmentation_mosaic(scan["ct"], scan["dseg"], scan["mask"], tmp_path / "seg.svg", n_slices=4)
    reg = plot_registration_check(
        template_pair["template_ct"], template_pair["template"], tmp_path / "reg.svg", n_cuts=3
    )
    png = tmp_path / "extra.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(png)
    warnings = [
        "Gantry tilt of 12 degrees <script>alert('x')</script>",
        "Brain volume 2900 mL & more than expected",
    ]
    qc = {"registration_similarity": 0.812, "mask_dice": 0.934, "custom_check": "passed"}
    out = write_scan_report(
        tmp_path / "sub-01_ses-1.html", "sub-01_ses-1", {**VOLUMES, **QC_COLUMNS},
        {"segmentation": seg, "registration": reg, "my extra figure": png},
        warnings, qc, METADATA,
    )
    parser = _parse(out)
    text = " ".join(parser.text)
    raw = out.read_text(encoding="utf-8")
    assert "sub-01_ses-1" in text
    assert METADATA["Sources"][0] in text
    for column in VOLUME_COLUMNS:
        assert column in text
    assert "20.00" in text and "1480.50" in text
    for warning in warnings:
        assert warning in text  # shown verbatim to the reader ...
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in raw  # ... because it is escaped
    assert "&amp; more" in raw
    for key in [*qc, *QC_COLUMNS]:
        assert key in text
    assert "0.812" in text and "passed" in text  # the qc argument wins over the table's 0.62
    assert "0.620" not in text
    # The raised flag is listed with the warnings, with its description from pipeline/qc.py;
    # a flag that is not raised is not.
    warnings_section = raw.split('id="warnings"')[1].split('id="volumes"')[0]
    assert "flag_brain_volume" in warnings_section and "Brain volume outside" in warnings_section
    assert "flag_registration" not in warnings_section
    assert "1 QC flag" in text
    assert METADATA["Model"]["weights_sha256"][0] in text
    assert "blastct-v1" in text and "5.4.2" in text and "Rigid" in text
    # Figures are embedded: two inline SVGs and the PNG as a data URI, all with captions.
    assert parser.tags.count("svg") == 2 and parser.tags.count("figcaption") == 3
    assert 'src="data:image/png;base64,' in raw
    assert "my extra figure" in text
    # Inline SVGs get unique element ids.
    ids = [attrs["id"] for _, attrs in parser.attrs if "id" in attrs]
    assert len(ids) == len(set(ids))
    _assert_self_contained(out, parser)
    assert "No warnings" not in text


def test_scan_report_without_warnings(tmp_path):
    out = write_scan_report(tmp_path / "r.html", "sub-02", {"iph_ml": float("nan")}, {}, [], {}, {})
    parser = _parse(out)
    text = " ".join(parser.text)
    assert "No warnings" in text and "sub-02" in text and "n/a" in text
    _assert_self_contained(out, parser)


def test_scan_report_rejects_svg_with_script(tmp_path):
    bad = tmp_path / "bad.svg"
    bad.write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    with pytest.raises(ValueError, match="scripts"):
        write_scan_report(tmp_path / "r.html", "sub-01", {}, {"bad": bad}, [], {}, {})
    assert not (tmp_path / "r.html").exists()


def _group_table(root: Path) -> pd.DataFrame:
    rows = [
        dict(participant_id="sub-01", session_id="ses-1", run="01",
             source_file="sub-01/ses-1/anat/sub-01_ses-1_run-01_ct.nii.gz",
             iph_ml=12.5, eah_ml=0.0, oed_ml=3.0, ivh_ml=0.0, hemorrhage_ml=12.5, brain_ml=1400.0,
             status="ok", error="n/a", flag_registration="false", qc_contrast="good"),
        dict(participant_id="sub-01", session_id="ses-1", run="02",
             source_file="sub-01/ses-1/anat/sub-01_ses-1_run-02_ct.nii.gz",
             iph_ml=40.0, eah_ml=2.0, oed_ml=9.0, ivh_ml=1.0, hemorrhage_ml=43.0, brain_ml=1500.0,
             status="ok", error="n/a", flag_registration="true", qc_contrast="good"),
        dict(participant_id="sub-02", session_id="n/a", run="n/a", source_file="sub-02/anat/sub-02_ct.nii.gz",
             iph_ml="n/a", eah_ml="n/a", oed_ml="n/a", ivh_ml="n/a", hemorrhage_ml="n/a", brain_ml="n/a",
             status="failed", error="RuntimeError: <b>bad</b> header", flag_registration="n/a", qc_contrast="n/a"),
        dict(participant_id="sub-03", session_id="n/a", run="n/a", source_file="sub-03/anat/sub-03_ct.nii.gz",
             iph_ml="n/a", eah_ml="n/a", oed_ml="n/a", ivh_ml="n/a", hemorrhage_ml="n/a", brain_ml="n/a",
             status="missing", error="n/a", flag_registration="n/a", qc_contrast="n/a"),
    ]
    table = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "group_volumes.tsv", sep="\t", index=False)
    return table


def test_group_report(tmp_path):
    root = tmp_path / "out"
    _group_table(root)
    # One scan has its report already.
    (root / "sub-01_ses-1_run-02.html").write_text("<html></html>")
    out = write_group_report(root)
    assert out == root / GROUP_REPORT
    parser = _parse(out)
    text = " ".join(parser.text)
    raw = out.read_text(encoding="utf-8")
    scans = {
        "sub-01_ses-1_run-01": {"subject": "01", "session": "1", "run": "01"},
        "sub-01_ses-1_run-02": {"subject": "01", "session": "1", "run": "02"},
        "sub-02": {"subject": "02"},
        "sub-03": {"subject": "03"},
    }
    links = [attrs.get("href") for tag, attrs in parser.attrs if tag == "a"]
    for sid, ents in scans.items():
        assert sid in text
        assert derivative_relpath(ents, "report").as_posix() in links  # zero-padded run kept
    # The 'needs a look' table names the flagged, failed and missing scans with their reason.
    section = raw.split('id="attention"')[1].split('id="distribution"')[0]
    for sid in ("sub-01_ses-1_run-02", "sub-02", "sub-03"):
        assert f'href="{sid}.html"' in section
    assert "sub-01_ses-1_run-01" not in section
    assert "flag_registration" in section
    assert "RuntimeError: &lt;b&gt;bad&lt;/b&gt; header" in raw and "<b>bad</b>" not in raw
    # The distribution plot and the course of the subject with two scans are embedded; the
    # table lists every column.
    assert parser.tags.count("svg") == 2
    assert "figure-courses" in raw
    for column in ("participant_id", "qc_contrast", *VOLUME_COLUMNS):
        assert column in text
    _assert_self_contained(out, parser)


def test_group_report_all_failed_and_missing_table(tmp_path):
    root = tmp_path / "out"
    table = _group_table(root)
    table[table["status"] != "ok"].to_csv(root / "group_volumes.tsv", sep="\t", index=False)
    parser = _parse(write_group_report(root))
    text = " ".join(parser.text)
    assert "No scan has volumes yet" in text
    with pytest.raises(FileNotFoundError, match="group level"):
        write_group_report(tmp_path / "nothing")


# -------------------------------------------------------------------------------------------
# Interface
# -------------------------------------------------------------------------------------------


def test_scan_report_interface(scan, template_pair, tmp_path, monkeypatch):
    from ichseg.pipeline.interfaces.reports import ScanReport

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = ScanReport(
        source_file="/data/sub-07/ses-2/anat/sub-07_ses-2_run-3_ct.nii.gz",
        ct_file=str(scan["ct"]), dseg=str(scan["dseg"]), brain_mask=str(scan["mask"]),
        template_ct=str(template_pair["template_ct"]), template=str(template_pair["template"]),
        volumes={**VOLUMES, **QC_COLUMNS, "registration_dice": 0.5},
        metadata={**METADATA, "Warnings": ["check me"]}, n_slices=6,
    ).run()
    outputs = result.outputs
    for name in ("out_report", "mosaic_svg", "registration_svg"):
        assert Path(getattr(outputs, name)).is_file()
        assert Path(getattr(outputs, name)).parent == work
    assert outputs.mosaic_svg.endswith(".svg") and outputs.registration_svg.endswith(".svg")
    parser = _parse(Path(outputs.out_report))
    text = " ".join(parser.text)
    assert "sub-07_ses-2_run-3" in text and "check me" in text and "0.500" in text
    assert "flag_brain_volume" in text and "n_warnings" in text
    assert parser.tags.count("svg") == 2
    assert METADATA["Sources"][0] in text  # the sidecar's source, not source_file


def test_scan_report_interface_shows_the_sidecar_warnings(scan, template_pair, tmp_path, monkeypatch):
    from ichseg.pipeline.interfaces.reports import ScanReport

    monkeypatch.chdir(tmp_path)
    result = ScanReport(
        source_file="not-bids.nii.gz", ct_file=str(scan["ct"]), dseg=str(scan["dseg"]),
        brain_mask=str(scan["mask"]), template_ct=str(template_pair["template_ct"]),
        template=str(template_pair["template"]), volumes=dict(VOLUMES),
        metadata={k: v for k, v in METADATA.items() if k != "Sources"},
        n_slices=3,
    ).run()
    text = " ".join(_parse(Path(result.outputs.out_report)).text)
    assert "Slice spacing is uneven (sidecar warning)" in text
    assert "not-bids" in text  # scan name of a non-BIDS source: the file name
    assert "No quality-control values" in text


@pytest.mark.parametrize(
    "linear",
    [
        np.diag([-0.5, 0.5, 6.0]),  # LAS, scanner-like
        np.array([[0, 0, -2.0], [-1.0, 0, 0], [0, 3.0, 0]]),  # axes permuted and flipped (PSL-like)
        np.array([[1.0, 0, 0], [0, 0.97, -0.5], [0, 0.26, 1.9]]),  # gantry-tilt shear
    ],
)
def test_ras_reader_matches_closest_canonical(tmp_path, linear):
    """Slices read lazily in RAS order equal those of nibabel's as_closest_canonical."""
    from ichseg.pipeline.figures import _RASVolume

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=(7, 5, 6)).astype(np.int16)
    affine = np.eye(4)
    affine[:3, :3] = linear
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(0.5, -10.0)  # scaled data, as many CTs are stored
    nib.save(img, tmp_path / "x.nii.gz")
    reference = nib.as_closest_canonical(nib.load(tmp_path / "x.nii.gz"))
    expected = reference.get_fdata()
    volume = _RASVolume(tmp_path / "x.nii.gz")
    assert volume.shape == expected.shape
    np.testing.assert_allclose(volume.affine, reference.affine)
    np.testing.assert_allclose(volume.array(np.float32), expected)
    for k in range(expected.shape[2]):
        np.testing.assert_allclose(volume.axial(k), expected[:, :, k])


def test_scan_report_shows_a_missing_measure_as_n_a(tmp_path):
    # the workflow passes the volume row as values: a measure it could not compute is None
    out = write_scan_report(tmp_path / "r.html", "sub-01", {"registration_dice": None}, {})
    text = " ".join(_parse(out).text)
    assert "registration_dice n/a" in text and "None" not in text
