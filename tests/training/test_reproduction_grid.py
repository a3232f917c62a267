"""The reproduction grid harness (scripts/reproduction): cell naming, skip-if-done, commands, and the
aggregator's t-intervals and seed pairing, on synthetic cell results (no training is run)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "scripts" / "reproduction"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"repro_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


grid = _load("run_grid")
agg = _load("aggregate")


def _args(tmp_path: Path, *extra: str):
    return grid.build_parser().parse_args(["--data", str(tmp_path / "data"), "--out-root", str(tmp_path / "runs"),
                                           "--mtp-encoder", "enc.safetensors", *extra])


# ------------------------------------------------------------------------------------------------ grid
def test_cells_are_unique_seed_major_and_named_by_all_coordinates():
    cells = grid.grid_cells("scene_classification", ["imp", "imp+mtp"], [0.01, 0.1, 1.0], [0, 1, 2])
    assert len(cells) == 18 and len({c.name for c in cells}) == 18
    assert cells[0].name == "scene_classification__imp__f0.01__s0"
    assert cells[1].name == "scene_classification__imp+mtp__f0.01__s0"
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)  # seed-major: complete seeds first
    assert grid.Cell("semantic_segmentation", "imp", 1.0, 3).name == "semantic_segmentation__imp__f1__s3"


@pytest.mark.parametrize(("inits", "fractions"), [(["imagenet"], [0.1]), (["imp"], [0.0]), (["imp"], [1.5])])
def test_grid_rejects_unknown_init_and_bad_fraction(inits, fractions):
    with pytest.raises(ValueError, match="init|fraction"):
        grid.grid_cells("scene_classification", inits, fractions, [0])


def test_cell_done_needs_a_complete_test_json(tmp_path):
    d = tmp_path / "cell"
    assert not grid.cell_done(d)
    d.mkdir()
    (d / "test.partial.json").write_text('{"OA": 0.5}')
    assert not grid.cell_done(d)  # evaluate wrote only the partial file: not done
    (d / "test.json").write_text('{"OA": 0.')  # truncated
    assert not grid.cell_done(d)
    (d / "test.json").write_text("{}")
    assert not grid.cell_done(d)
    (d / "test.json").write_text('{"OA": 0.5}')
    assert grid.cell_done(d)


def test_done_cells_are_skipped_without_running_anything(tmp_path, monkeypatch):
    args = _args(tmp_path, "--seeds", "0", "--fractions", "0.1")
    cell = grid.Cell("scene_classification", "imp", 0.1, 0)
    d = tmp_path / "runs" / cell.name
    d.mkdir(parents=True)
    (d / "test.json").write_text('{"OA": 0.5}')
    (d / "cell.json").write_text('{"seed": 0}')

    def boom(*a, **k):
        raise AssertionError("a done cell must not run a command")

    monkeypatch.setattr(grid.subprocess, "call", boom)
    assert grid.run_cell(cell, args) == {"seed": 0}


def test_run_cell_marks_done_only_after_both_commands_succeed(tmp_path, monkeypatch):
    args = _args(tmp_path)
    cell = grid.Cell("scene_classification", "imp+mtp", 0.01, 1)
    calls = []

    def fake_call(argv, stdout, stderr, cwd):  # stands in for rsfm-train: writes what the real one writes
        calls.append(argv)
        if argv[1] == "evaluate":
            out = Path(argv[argv.index("--out") + 1])
            out.write_text(json.dumps({"OA": 0.7, "mAcc": 0.6}))
            return 0
        (Path(argv[argv.index("--out") + 1]) / "best.pt").write_bytes(b"x")
        return 0

    monkeypatch.setattr(grid.subprocess, "call", fake_call)
    rec = grid.run_cell(cell, args)
    d = tmp_path / "runs" / cell.name
    assert grid.cell_done(d) and not (d / "best.pt").exists() and not (d / "test.partial.json").exists()
    ft, ev = calls
    assert ft[ft.index("--backbone-weights") + 1] == "enc.safetensors" and "--pretrained" in ft
    assert ft[ft.index("--label-fraction") + 1] == "0.01" and ft[ft.index("--seed") + 1] == "1"
    assert ft[ft.index("--max-steps") + 1] == ft[ft.index("--steps-per-epoch") + 1] == "40"
    assert ev[2].endswith("last.pt") and ev[ev.index("--split") + 1] == "test"
    assert ev[ev.index("--test-fraction") + 1] == ft[ft.index("--test-fraction") + 1] == "0.2"
    assert rec["fraction"] == 0.01 and json.loads((d / "cell.json").read_text())["init"] == "imp+mtp"


def test_failed_evaluate_leaves_the_cell_todo(tmp_path, monkeypatch):
    args = _args(tmp_path, "--inits", "imp")
    cell = grid.Cell("scene_classification", "imp", 1.0, 0)
    monkeypatch.setattr(grid.subprocess, "call", lambda argv, **k: 0 if argv[1] == "finetune" else 3)
    with pytest.raises(RuntimeError, match="evaluate .* failed"):
        grid.run_cell(cell, args)
    assert not grid.cell_done(tmp_path / "runs" / cell.name)


def test_imp_cells_do_not_load_the_mtp_encoder(tmp_path):
    args = _args(tmp_path)
    ft = grid.finetune_argv(grid.Cell("scene_classification", "imp", 0.1, 0), args, tmp_path)
    assert "--backbone-weights" not in ft and "--pretrained" in ft


@pytest.mark.parametrize(("init", "imagenet", "mtp"), [("random", False, False), ("random+mtp", False, True),
                                                      ("imp+mtp", True, True)])
def test_random_inits_start_without_imagenet_weights(tmp_path, init, imagenet, mtp):
    ft = grid.finetune_argv(grid.Cell("scene_classification", init, 0.1, 0), _args(tmp_path), tmp_path)
    assert ("--pretrained" in ft) == imagenet and ("--no-pretrained" in ft) == (not imagenet)
    assert ("--backbone-weights" in ft) == mtp


# ------------------------------------------------------------------------------------------- aggregate
def test_t_interval_matches_the_textbook_formula():
    mean, half, n = agg.t_interval([0.70, 0.72, 0.74])
    assert n == 3 and mean == pytest.approx(0.72)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)  # t_{0.975,2} = 4.3027, sd = 0.02
    m1, h1, n1 = agg.t_interval([0.5])
    assert (m1, n1) == (0.5, 1) and math.isnan(h1)
    with pytest.raises(ValueError):
        agg.t_interval([])


def _cell(init, frac, seed, oa, macc=None):
    return {"task": "scene_classification", "init": init, "fraction": frac, "seed": seed,
            "metrics": {"OA": oa, "mAcc": oa if macc is None else macc},
            "cell": f"scene_classification__{init}__f{frac:g}__s{seed}",
            "finetune_argv": ["rsfm-train", "finetune", "--seed", str(seed)],
            "evaluate_argv": ["rsfm-train", "evaluate", "last.pt"], "train_cpu_s": 60.0, "eval_cpu_s": 30.0,
            "train_wall_s": 61.0, "eval_wall_s": 31.0}


def test_paired_difference_pairs_by_seed_not_by_order():
    # Seed effects are large and shared; MTP adds exactly +0.02 on every seed. Listed in scrambled order and
    # with an unpaired seed 9 on the IMP side, which must be ignored.
    cells = [_cell("imp", 0.1, 0, 0.50), _cell("imp", 0.1, 1, 0.70), _cell("imp", 0.1, 2, 0.60),
             _cell("imp", 0.1, 9, 0.10),
             _cell("imp+mtp", 0.1, 2, 0.62), _cell("imp+mtp", 0.1, 0, 0.52), _cell("imp+mtp", 0.1, 1, 0.72)]
    (mean, half, n, seeds), = agg.paired_differences(cells, "OA").values()
    assert (n, seeds) == (3, [0, 1, 2])
    assert mean == pytest.approx(0.02) and half == pytest.approx(0.0, abs=1e-12)  # paired: no seed noise left
    # the unpaired interval of each init is wide because of the seed effect
    s = agg.summarise(cells, "OA")
    assert s[("scene_classification", "imp+mtp", 0.1)][1] > 0.2


def test_duplicate_seed_is_an_error():
    with pytest.raises(ValueError, match="two cells"):
        agg.paired_differences([_cell("imp", 0.1, 0, 0.5), _cell("imp", 0.1, 0, 0.6)], "OA")


def test_render_and_load_cells_from_disk(tmp_path):
    for c in [_cell(i, f, s, 0.5 + 0.01 * s + (0.03 if i == "imp+mtp" else 0.0), 0.4)
              for i in ("imp", "imp+mtp") for f in (0.01, 1.0) for s in (0, 1)]:
        d = tmp_path / c["cell"]
        d.mkdir()
        (d / "test.json").write_text(json.dumps(c.pop("metrics")))
        c.pop("cell")
        (d / "cell.json").write_text(json.dumps(c))
    (tmp_path / "unfinished").mkdir()  # no test.json: not a result
    cells = agg.load_cells(tmp_path)
    assert len(cells) == 8
    launches = [{"argv": ["python", "run_grid.py", "--seeds", "0,1"]},  # recorded before omp_num_threads was
                {"argv": ["python", "run_grid.py", "--inits", "imp+mtp"], "omp_num_threads": "2"}]
    text = agg.render(cells, notes="NOTE-TEXT", grid_argvs=[agg.launch_command(r) for r in launches])
    assert "| imp | 0.01 | 2 | 50.5 (" in text and "| imp+mtp | 1 | 2 | 53.5 (" in text
    assert "| 0.01 | 2 | +3.0 (+3.0 to +3.0)" in text  # constant paired difference, zero width
    assert "NOTE-TEXT" in text and "rsfm-train finetune" in text and "8 cells" in text
    assert "OMP_NUM_THREADS=1 python run_grid.py --seeds 0,1" in text
    assert "OMP_NUM_THREADS=2 python run_grid.py --inits imp+mtp" in text
    assert "the launches side by side" in text
    assert "One cell (scene_classification__imp__" in text  # the baseline is the example, not glob order
    with pytest.raises(ValueError, match="no finished cells"):
        agg.render([])


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_grid_runs_real_commands_resumes_and_aggregates(tmp_path, capsys):
    """Two real cells (IMP, IMP+MTP) of 2 steps on a synthetic scene folder, then a resumed run that skips
    both, then the report: the grid's argv is accepted by the real rsfm-train finetune/evaluate."""
    from safetensors.torch import save_file

    from training.data.make_fixture import write_scenes
    from training.models import create_model

    data = write_scenes(tmp_path / "scenes", per_class=10)
    enc = tmp_path / "enc.safetensors"  # stands in for an MTP encoder: a differently initialised backbone
    save_file({k: v.contiguous() for k, v in create_model("efficientnet_lite0").state_dict().items()}, str(enc))
    argv = ["--data", str(data), "--dataset", "scene_folder", "--out-root", str(tmp_path / "runs"),
            "--mtp-encoder", str(enc), "--seeds", "0", "--fractions", "1.0", "--steps", "2", "--batch-size", "4",
            "--crop-size", "32", "--warmup-steps", "1"]
    assert grid.main(argv) == 0
    cells = agg.load_cells(tmp_path / "runs")
    assert sorted(c["init"] for c in cells) == ["imp", "imp+mtp"]
    assert all(c["metrics"]["images"] == 2 * 3 for c in cells)  # 20 % of 10 per class, 3 classes: the test split
    capsys.readouterr()
    assert grid.main(argv) == 0
    assert capsys.readouterr().out.count("skip ") == 2
    text = agg.render(cells)
    assert "| 1 | 1 | " in text  # one pair at fraction 1
    # the launch is recorded per --inits and --seeds, so grids for different inits or seeds can share a root
    assert json.loads((tmp_path / "runs" / "grid.imp_imp-mtp.s0.json").read_text())["argv"][-len(argv):] == argv
    assert agg.main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md")]) == 0
    assert "--mtp-encoder" in (tmp_path / "r.md").read_text()


def test_each_mtp_init_is_paired_with_its_start():
    assert agg.mtp_pairs({"imp", "imp+mtp", "random", "random+mtp"}) == [("imp+mtp", "imp"),
                                                                         ("random+mtp", "random")]
    assert agg.mtp_pairs({"random+mtp"}) == []  # nothing to pair with
    cells = [_cell(i, 0.1, s, 0.1 + 0.01 * s + (0.05 if i == "random+mtp" else 0.0))
             for i in ("random", "random+mtp") for s in (0, 1)]
    text = agg.render(cells, notes="")
    assert "Paired difference random+mtp minus random" in text and "| 0.1 | 2 | +5.0 (+5.0 to +5.0)" in text
    assert "imp" not in text.replace("random", "")


def test_an_encoder_that_saw_the_test_split_is_refused_unless_allowed(tmp_path):
    data = tmp_path / "data" / "nwpu_vhr10"
    enc = tmp_path / "mtp" / "encoder.safetensors"
    enc.parent.mkdir()
    enc.write_bytes(b"")  # only its existence and encoder.json are read before a cell runs
    meta = {"mtp_steps": 5, "sources": ["dubai_seg", "nwpu_vhr10"], "held_out": {}}
    (enc.parent / "encoder.json").write_text(json.dumps(meta))
    argv = ["--task", "object_detection", "--data", str(data), "--mtp-encoder", str(enc), "--seeds", "0",
            "--out-root", str(tmp_path / "runs"), "--dry-run"]
    with pytest.raises(SystemExit, match="--hold-out nwpu_vhr10="):
        grid.main(argv)
    assert grid.main([*argv, "--allow-pretraining-overlap"]) == 0
    assert grid.main([*argv, "--inits", "imp"]) == 0  # no MTP cell: nothing to check
    # held out at pretraining (or another dataset): runs
    meta["held_out"] = {"nwpu_vhr10": "441-520"}
    (enc.parent / "encoder.json").write_text(json.dumps(meta))
    assert grid.pretraining_overlap(meta, str(data)) is None and grid.main(argv) == 0
    assert grid.pretraining_overlap(meta, str(tmp_path / "aid")) is None


def test_several_grid_roots_make_one_page_with_a_section_and_an_example_per_task(tmp_path):
    for root, task, metric in (("a", "change_detection", "F1"), ("b", "object_detection", "mAP")):
        for init in ("imp", "imp+mtp"):
            c = _cell(init, 1.0, 0, 0.3 + (0.1 if init == "imp+mtp" else 0.0))
            c["task"], c["metrics"] = task, {metric: c["metrics"]["OA"]}
            d = tmp_path / root / f"{task}__{init}__f1__s0"
            d.mkdir(parents=True)
            (d / "test.json").write_text(json.dumps(c.pop("metrics")))
            c.pop("cell")
            (d / "cell.json").write_text(json.dumps(c))
        (tmp_path / root / "grid.imp.s0.json").write_text(json.dumps({"argv": ["python", "run_grid.py", root]}))
    out = tmp_path / "page.md"
    assert agg.main(["--root", str(tmp_path / "a"), "--root", str(tmp_path / "b"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## change_detection" in text and "## object_detection" in text
    assert "| imp+mtp | 1 | 1 | 40.0" in text and "F1 (95 % CI)" in text and "mAP (95 % CI)" in text
    assert "One cell (change_detection__imp__f1__s0)" in text and "One cell (object_detection__imp__f1__s0)" in text
    assert "python run_grid.py a" in text and "python run_grid.py b" in text


@pytest.mark.parametrize("task", ["scene_classification", "semantic_segmentation", "change_detection",
                                  "object_detection", "rotated_detection", "instance_segmentation"])
def test_grid_commands_parse_with_the_real_finetune_and_evaluate_options(tmp_path, task):
    """Every task's cell command is accepted by rsfm-train's own parsers (a wrong option fails only after
    the grid has been launched, so check it here), detector options included."""
    import argparse

    from training import evaluate, finetune

    extra = ["--finetune-arg=--fpn-channels=64", "--finetune-arg=--val-every-min=1000"] if "detection" in task \
        or task == "instance_segmentation" else ["--finetune-arg=--head-channels=32"]
    args = _args(tmp_path, "--task", task, *extra)
    cell = grid.Cell(task, "imp+mtp", 0.1, 0)
    ft, ev = grid.finetune_argv(cell, args, tmp_path), grid.evaluate_argv(cell, args, tmp_path)
    assert ft[1] == "finetune" and ev[1] == "evaluate"
    for module, argv in ((finetune, ft), (evaluate, ev)):
        p = argparse.ArgumentParser(exit_on_error=False)
        module.add_arguments(p)
        ns = p.parse_args(argv[2:])
        assert ns.task == task if module is finetune else ns.split == "test"
