"""Change facts against a second image: the changed share and area from the change map, the change regions
C1.. from its polygons, the ``change`` intent, the verifier on region IDs, and a change map in another CRS.

Expected numbers come from the fixture's construction (tests/chat/chat_fixtures.py docstring)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from chat_fixtures import CHANGE_REGIONS, ORIGIN_X, ORIGIN_Y, RES_M

from backend.chat.facts import PerceptionOutput, build_fact_sheet, compact_fact_text, numbers_in
from backend.chat.router import NO_CHANGE_MAP, answer_question, classify
from backend.chat.verifier import verify


def change_outputs(fx, later: bool = True, raster: str | None = None, polygons: str | None = None):
    other = fx["raster_later"] if later else fx["raster"]
    return [PerceptionOutput(raster or fx["change"], "change_detection", other_raster=other, other_is_later=later),
            PerceptionOutput(polygons or fx["change_polygons"], "change_detection", other_raster=other,
                             other_is_later=later)]


def sheet_of(fx, **kw):
    return build_fact_sheet(fx["raster"], change_outputs(fx), **kw)


def test_changed_share_area_and_quarter(chat_fixture):
    sheet = sheet_of(chat_fixture)
    share = sheet.by_kind("change")[0]
    assert share.text == ("Change against the later image raster_later.tif (acquired 2025:06:01 10:00:00): 6% of "
                          "the area changed, 4800 m²; mostly in the north-east quarter (83.3% of it).")
    assert share.data["share_pct"] == pytest.approx(6.0) and share.data["pixels"] == 1200
    assert share.data["area_km2"] == pytest.approx(0.0048) and share.data["quadrant"] == "north-east"
    assert "change" in sheet.present_classes and "no change" not in sheet.known_classes


def test_change_regions_largest_first_with_boxes_and_coordinates(chat_fixture):
    sheet = sheet_of(chat_fixture)
    count = sheet.by_kind("change")[1]
    assert count.data == {"regions": 2, "quadrants": {"north-east": 1, "south-west": 1}}
    assert "4800 m² in total" in count.text
    c1, c2 = sheet.by_kind("change_region")
    assert c1.data["object_id"] == "C1" and c1.data["pixel_box_xyxy"] == list(CHANGE_REGIONS[0])
    assert c1.data["area_m2"] == pytest.approx(4000) and c2.data["area_m2"] == pytest.approx(800)
    assert c1.data["quadrant"] == "north-east" and c2.data["quadrant"] == "south-west"
    x0, y0, x1, y1 = CHANGE_REGIONS[0]
    assert c1.data["centre"] == pytest.approx([ORIGIN_X + RES_M * (x0 + x1) / 2, ORIGIN_Y - RES_M * (y0 + y1) / 2])
    assert "lon " in c1.text and c1.geometry["type"] == "Polygon"


def test_bbox_restricts_change(chat_fixture):
    # west half: only region B (200 of 10,000 px)
    sheet = sheet_of(chat_fixture, bbox=[ORIGIN_X, ORIGIN_Y - 200, ORIGIN_X + 200, ORIGIN_Y])
    assert sheet.by_kind("change")[0].data["share_pct"] == pytest.approx(2.0)
    assert [f.data["pixel_box_xyxy"] for f in sheet.by_kind("change_region")] == [list(CHANGE_REGIONS[1])]


def test_no_change_and_earlier_image(chat_fixture, tmp_path):
    import rasterio

    blank = tmp_path / "nochange.tif"
    with rasterio.open(chat_fixture["change"]) as src:
        profile, tags = src.profile, src.tags(1)
    with rasterio.open(blank, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), np.uint8))
        dst.update_tags(1, **tags)
    sheet = build_fact_sheet(chat_fixture["raster_later"], [PerceptionOutput(
        str(blank), "change_detection", other_raster=chat_fixture["raster"], other_is_later=False)])
    f = sheet.by_kind("change")[0]
    assert f.text.startswith("No change detected against the earlier image raster.tif (acquired 2024:05:01")
    assert "change" not in sheet.present_classes
    a = answer_question("What changed since then?", sheet)
    assert a.intent == "change" and a.text == f"Nothing changed in this area: 0% of it changed [{f.id}]."
    assert a.verification["ok"]
    # claiming change where the map has none is caught
    assert not verify(f"Many buildings changed: 12% of the area [{f.id}].", sheet).ok


def test_change_map_in_another_crs(chat_fixture, tmp_path):
    """A change job writes on the earlier image's grid, which may be in another CRS than the asked raster."""
    import pyogrio
    import rasterio
    import shapely
    from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_geom

    dst_crs = "EPSG:3857"
    moved = tmp_path / "change_3857.tif"
    with rasterio.open(chat_fixture["change"]) as src:
        tf, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        profile = {**src.profile, "crs": dst_crs, "transform": tf, "width": w, "height": h}
        with rasterio.open(moved, "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.nearest)
            dst.update_tags(1, **src.tags(1))
    meta, _, geoms, fields = pyogrio.raw.read(chat_fixture["change_polygons"])
    polys = [shapely.geometry.shape(transform_geom("EPSG:32640", dst_crs, shapely.geometry.mapping(g)))
             for g in shapely.from_wkb(geoms)]
    moved_gpkg = tmp_path / "change_3857.gpkg"
    pyogrio.raw.write(str(moved_gpkg), np.array([shapely.to_wkb(p) for p in polys], dtype=object), list(fields),
                      list(meta["fields"]), layer="changes", driver="GPKG", geometry_type="Polygon", crs=dst_crs)
    sheet = build_fact_sheet(chat_fixture["raster"], change_outputs(chat_fixture, raster=str(moved),
                                                                     polygons=str(moved_gpkg)))
    assert sheet.by_kind("change")[0].data["share_pct"] == pytest.approx(6.0, abs=1.0)
    c1 = sheet.by_kind("change_region")[0]
    # the region is back in the asked raster's CRS and grid
    assert np.allclose(c1.data["pixel_box_xyxy"], CHANGE_REGIONS[0], atol=1)
    assert c1.data["centre"][0] == pytest.approx(ORIGIN_X + RES_M * 175, abs=3)


@pytest.mark.parametrize("question", ["What changed?", "How much has changed since the earlier image?",
                                      "Are there new buildings?", "What is different between the two images?"])
def test_change_questions_route_to_change(question):
    assert classify(question) == "change"


@pytest.mark.parametrize("question", ["How many ships are there?", "What share is water?", "Where are the vehicles?"])
def test_other_questions_do_not(question):
    assert classify(question) != "change"


def test_change_answer_cites_and_verifies(chat_fixture):
    sheet = sheet_of(chat_fixture)
    share, count = sheet.by_kind("change")
    a = answer_question("How much changed?", sheet)
    assert a.intent == "change" and a.verification["ok"] and a.mode == "template"
    assert a.text.startswith(f"6% of the area changed, 4800 m², mostly in the north-east quarter [{share.id}].")
    assert f"There are 2 change regions [{count.id}]" in a.text and "C1 (4000 m², north-east quarter)" in a.text
    # citing the region count draws every listed region
    assert [o["id"] for o in a.objects] == ["C1", "C2"] and a.objects[0]["score"] is None
    where = answer_question("Where did it change?", sheet)
    assert "pixel box [150, 0, 200, 20]" in where.text and "centre x=500350.0, y=2799980.0" in where.text
    assert where.verification["ok"]


def test_no_change_map_is_an_honest_refusal(chat_fixture):
    sheet = build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(chat_fixture["landcover"])])
    a = answer_question("What changed?", sheet)
    assert a.text == NO_CHANGE_MAP and not a.cited


def test_verifier_checks_region_ids_and_numbers(chat_fixture):
    sheet = sheet_of(chat_fixture)
    c1 = sheet.by_kind("change_region")[0]
    assert verify(f"The largest change is C1, {c1.data['pixel_box_xyxy']} [{c1.id}].", sheet).ok
    v = verify(f"Region C7 changed [{c1.id}].", sheet)
    assert not v.ok and "C7" in v.problems[0][1]
    share = sheet.by_kind("change")[0]
    assert not verify(f"About 10% of the area changed [{share.id}].", sheet).ok
    assert verify(f"About 6% of the area changed [{share.id}].", sheet).ok
    # dates are checked whole, and their digits never support other numbers ("10" of 10:00:00 above)
    assert verify(f"The later image was taken on 2025-06-01 [{share.id}].", sheet).ok
    v = verify(f"The later image was taken on 2023-06-01 [{share.id}].", sheet)
    assert not v.ok and "date 2023-06-01" in v.problems[0][1]


def test_compact_change_lines_keep_ids_and_numbers(chat_fixture):
    sheet = sheet_of(chat_fixture)
    for f in sheet.facts:
        short = compact_fact_text(f)
        assert [v for v in numbers_in(short) if v not in f.values] == [], (f.id, short)
    lines = dict(re.match(r"\[(F\d+)\] (.*)", ln).groups() for ln in sheet.to_prompt_text().splitlines())
    region = sheet.by_kind("change_region")[0]
    assert lines[region.id] == "C1 change 4000 m² NE box 150 0 200 20"
    assert "acquired" not in lines[sheet.by_kind("change")[0].id]


def test_change_output_errors_name_the_fix(chat_fixture, tmp_path):
    from backend.chat.facts import FactSheetError

    with pytest.raises(FactSheetError, match="change map .* does not exist; run the change detection job"):
        build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(str(tmp_path / "none.tif"), "change_detection")])


def selected_polygons():
    """Two selected polygons (raster CRS): cols 0-50 (all water, 3 ships, change region B) and cols 100-150 x
    rows 0-50 (all building): 5,000 + 2,500 px = 0.03 km²."""
    import shapely

    def box(c0, r0, c1, r1):
        return shapely.box(ORIGIN_X + RES_M * c0, ORIGIN_Y - RES_M * r1, ORIGIN_X + RES_M * c1, ORIGIN_Y - RES_M * r0)

    return shapely.MultiPolygon([box(0, 0, 50, 100), box(100, 0, 150, 50)])


def test_selected_polygons_restrict_every_fact(chat_fixture):
    from chat_fixtures import DET_CLASSES

    fx = chat_fixture
    sheet = build_fact_sheet(fx["raster"], [PerceptionOutput(fx["landcover"]),
                                            PerceptionOutput(fx["detections"], classes=DET_CLASSES),
                                            *change_outputs(fx)], aoi=selected_polygons())
    assert "only inside the selected polygons, 0.03 km²" in sheet.by_kind("meta")[0].text
    lc = {f.data["class"]: f.data for f in sheet.by_kind("landcover")}
    assert lc["water"]["share_pct"] == pytest.approx(200 / 3) and lc["water"]["pixels"] == 5000
    assert lc["building"]["share_pct"] == pytest.approx(100 / 3) and "vegetation" not in lc
    counts = {f.data["class"]: f.data["count"] for f in sheet.by_kind("count") if f.data.get("class")}
    assert counts == {"ship": 3}  # the vehicles lie outside both polygons
    share = sheet.by_kind("change")[0].data
    assert share["pixels"] == 200 and share["share_pct"] == pytest.approx(200 / 75)
    assert share["area_km2"] == pytest.approx(0.0008)
    assert [f.data["pixel_box_xyxy"] for f in sheet.by_kind("change_region")] == [list(CHANGE_REGIONS[1])]
