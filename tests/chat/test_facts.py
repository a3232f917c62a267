"""Fact sheet on a fixture raster + fixture outputs with KNOWN content (see chat_fixtures.py)."""

from __future__ import annotations

import json

import pytest
from chat_fixtures import DET_CLASSES, ORIGIN_X, ORIGIN_Y

from backend.chat.facts import FactSheetError, PerceptionOutput, build_fact_sheet, fmt_num, norm_class


def sheet_of(fx, **kw):
    return build_fact_sheet(fx["raster"], [PerceptionOutput(fx["landcover"]),
                                           PerceptionOutput(fx["detections"], classes=DET_CLASSES)], **kw)


def test_metadata(chat_fixture):
    s = sheet_of(chat_fixture)
    meta = s.by_kind("meta")[0]
    assert meta.id == "F1"
    assert meta.data["width_px"] == 200 and meta.data["height_px"] == 100 and meta.data["bands"] == 3
    assert meta.data["gsd_m"] == pytest.approx(2.0)
    assert meta.data["crs"] == "EPSG:32640"
    assert meta.data["date"] == "2024:05:01 10:00:00"
    assert meta.data["band_names"] == ["red", "green", "blue"]
    assert "0.08 km²" in meta.text  # 400 m x 200 m


def test_landcover_exact_shares_and_areas(chat_fixture):
    s = sheet_of(chat_fixture)
    lc = {f.data["class"]: f.data for f in s.by_kind("landcover")}
    assert set(lc) == {"water", "building", "vegetation"}  # names from the sibling .qml
    assert lc["water"]["pixels"] == 10_000 and lc["water"]["share_pct"] == pytest.approx(50.0)
    assert lc["building"]["pixels"] == 2_500 and lc["building"]["area_km2"] == pytest.approx(0.01)
    assert lc["vegetation"]["area_km2"] == pytest.approx(0.03)
    assert lc["building"]["quadrant"] == "north-east"
    absent = s.by_kind("absent")[0]
    assert set(absent.classes) == {"background", "road"}


def test_counts_threshold_and_absent(chat_fixture):
    s = sheet_of(chat_fixture)
    counts = {f.data["class"]: f.data["count"] for f in s.by_kind("count")}
    assert counts == {None: 5, "ship": 3, "vehicle": 2}  # the 0.10 vehicle is below 0.3
    assert s.for_class("airplane", "absent")
    assert s.present_classes >= {"ship", "vehicle", "water"} and "airplane" not in s.present_classes
    low = sheet_of(chat_fixture, score_threshold=0.05)
    assert {f.data["class"]: f.data["count"] for f in low.by_kind("count")}["vehicle"] == 3
    ship = next(f for f in s.by_kind("count") if f.data["class"] == "ship")
    assert ship.data["quadrants"] == {"north-west": 2, "south-west": 1}
    assert "2400 m²" in ship.text  # 3 boxes of 20 m x 40 m


def test_objects_boxes_coordinates_and_neighbours(chat_fixture):
    s = sheet_of(chat_fixture)
    objs = s.by_kind("object")
    assert [o.data["object_id"] for o in objs] == ["O1", "O2", "O3", "O4", "O5"]
    assert [o.data["score"] for o in objs] == sorted((o.data["score"] for o in objs), reverse=True)
    o1 = objs[0].data
    assert o1["class"] == "ship" and o1["pixel_box_xyxy"] == [10, 10, 20, 30]
    assert o1["centre"] == pytest.approx([ORIGIN_X + 30.0, ORIGIN_Y - 40.0])
    assert objs[0].geometry["type"] == "Polygon"
    # O1 centre (15, 20) px, O2 (45, 30) px: sqrt(30² + 10²) * 2 m = 63.2 m
    assert "nearest object O2 (ship) at 63.2 m" in objs[0].text
    assert "lon 57.0" in objs[0].text


def test_bbox_restricts_everything(chat_fixture):
    s = sheet_of(chat_fixture, bbox=[ORIGIN_X, ORIGIN_Y - 200, ORIGIN_X + 200, ORIGIN_Y])  # west half
    lc = {f.data["class"]: f.data["share_pct"] for f in s.by_kind("landcover")}
    assert lc == {"water": pytest.approx(100.0)}
    counts = {f.data["class"]: f.data["count"] for f in s.by_kind("count")}
    assert counts == {None: 3, "ship": 3}
    assert "vehicle" in s.for_class("vehicle", "absent")[0].classes


def test_text_and_json_round_trip(chat_fixture):
    s = sheet_of(chat_fixture)
    text = s.to_text()
    assert text.splitlines()[0].startswith("[F1] ")
    assert len(text.split()) < 600  # compact enough for a 135M model's prompt
    j = json.loads(json.dumps(s.to_json()))
    assert [f["id"] for f in j["facts"]] == [f"F{i}" for i in range(1, len(s.facts) + 1)]
    assert "airplane" in j["known_classes"] and "airplane" not in j["present_classes"]


def test_fact_values_are_the_written_numbers(chat_fixture):
    s = sheet_of(chat_fixture)
    water = s.for_class("water", "landcover")[0]
    assert 50.0 in water.values and 0.04 in water.values


def test_errors_say_what_to_fix(chat_fixture, tmp_path):
    with pytest.raises(FactSheetError, match="does not exist"):
        build_fact_sheet(str(tmp_path / "nope.tif"))
    with pytest.raises(FactSheetError, match="does not overlap"):
        build_fact_sheet(chat_fixture["raster"], bbox=[0, 0, 1, 1])
    with pytest.raises(FactSheetError, match="task"):
        build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(str(tmp_path / "x.csv"))])


def test_helpers():
    assert norm_class("Storage_Tanks") == "storage tank"
    assert norm_class("ships") == "ship" and norm_class("bus") == "bus" and norm_class("grass") == "grass"
    assert fmt_num(0.012345) == "0.0123" and fmt_num(12345.6) == "12346" and fmt_num(37.5) == "37.5"


def test_detector_classes_from_layer_metadata(chat_fixture):
    s = build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(chat_fixture["detections"])])
    assert s.for_class("airplane", "absent")  # known from the GeoPackage layer metadata, so "0", not "?"


def test_reads_what_the_backend_job_writers_write(chat_fixture, tmp_path):
    """Outputs written with backend.outputs (the job writers): class names from CLASS_<i> band tags and
    from the categorized .qml on class_id, with no class list passed in."""
    import numpy as np
    import rasterio
    import shapely
    from rasterio.windows import Window

    from backend.outputs import ClassRasterWriter, VectorWriter, vector_qml
    from training.package import ClassInfo

    with rasterio.open(chat_fixture["raster"]) as src:
        crs_wkt, tf, w, h = src.crs.to_wkt(), src.transform, src.width, src.height
    seg_classes = [ClassInfo("bare", "#aaaaaa"), ClassInfo("water", "#0000ff"), ClassInfo("forest", "#00ff00")]
    cw = ClassRasterWriter(tmp_path / "lc.tif", w, h, crs_wkt, tf, seg_classes)
    arr = np.full((h, w), 2, np.uint8)
    arr[:, :50] = 1  # a quarter water
    arr[0, 0] = 255  # one nodata pixel is not counted
    cw.write_block(Window(0, 0, w, h), arr)
    cw.close()
    det_classes = [ClassInfo("plane", "#ff0000"), ClassInfo("boat", "#00ffff")]
    vw = VectorWriter(tmp_path / "det.gpkg", "detections", crs_wkt,
                      {"class_id": np.int32, "class_name": object, "score": np.float64}, {"model": "m@1"},
                      geometry_type="Polygon")
    vw.add(shapely.box(500010, 2799900, 500030, 2799950), class_id=1, class_name="boat", score=0.9)
    vw.close()
    (tmp_path / "det.qml").write_text(vector_qml(det_classes))
    s = build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(str(tmp_path / "lc.tif")),
                                                  PerceptionOutput(str(tmp_path / "det.gpkg"), layer="detections")])
    lc = {f.data["class"]: f.data["pixels"] for f in s.by_kind("landcover")}
    assert lc == {"water": 50 * h - 1, "forest": 150 * h}
    assert s.for_class("bare", "absent") and s.for_class("plane", "absent")
    assert {f.data["class"]: f.data["count"] for f in s.by_kind("count")} == {None: 1, "boat": 1}


def test_coco_class_counts_in_one_pass():
    from backend.chat.facts import coco_class_counts

    ann = {"categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "harbor"}],
           "annotations": [{"image_id": 7, "category_id": 1}, {"image_id": 7, "category_id": 1},
                           {"image_id": 7, "category_id": 2}, {"image_id": 9, "category_id": 2}]}
    assert coco_class_counts(ann) == {7: {"ship": 2, "harbor": 1}, 9: {"harbor": 1}}
