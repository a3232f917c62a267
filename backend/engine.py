"""The tiled raster engine: windowed reads, batched inference, blended overlaps, bounded memory.

Dense tasks (segmentation, change detection) run block by block. The processing window is cut into output
blocks of ``block_size_px``; each block is read with a halo of ``tile_overlap_px`` pixels (clipped at the
raster edge) so that its border pixels see context, covered by tiles of ``tile_size_px`` with the given
overlap, and every tile's logits are added into the block's accumulator with a separable linear-ramp
weight (``w = 1`` in a tile's middle, falling towards its edges), then normalised by the summed weights.
The block's class map is handed to a writer, and the accumulator is dropped: peak memory is about
``(block + 2*halo)^2 * (K + C + 1) * 4`` bytes whatever the raster's size.

Reads run one block ahead on a prefetch thread, and writes one block behind on a writer thread, so the
model rarely waits for the disk.

Sparse tasks (detection, scene classification) walk the same tile grid without accumulators
(:func:`iter_tile_batches`); their post-processors live in :mod:`backend.tasks`.

Coordinates: all windows here are in pixels relative to the processing window (the bbox sub-window or the
whole raster); ``RasterPlan.window_transform`` maps them to the raster's CRS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import Resampling
from rasterio.windows import Window

from backend.errors import BadRequestError, RasterReadError
from backend.raster import RasterPlan

ModelFn = Callable[..., object]  # (x[, x_after]) float32 BxCxHxW -> task output (see docs/CONTRACTS.md)
ProgressFn = Callable[[int, int], None]  # (tiles done, tiles total); may raise JobCancelled


@dataclass(frozen=True)
class EngineParams:
    """Tiling parameters in pixels. ``stride = tile_size_px - tile_overlap_px``."""

    tile_size_px: int
    tile_overlap_px: int
    batch_size: int
    block_size_px: int = 2048

    def __post_init__(self) -> None:
        if self.tile_size_px < 8:
            raise BadRequestError(f"tile_size_px must be >= 8, got {self.tile_size_px}")
        if not 0 <= self.tile_overlap_px <= self.tile_size_px // 2:
            raise BadRequestError(f"tile_overlap_px must be in [0, tile_size_px/2 = {self.tile_size_px // 2}], "
                                  f"got {self.tile_overlap_px}")
        if not 1 <= self.batch_size <= 256:
            raise BadRequestError(f"batch_size must be in [1, 256], got {self.batch_size}")
        if self.block_size_px < self.tile_size_px:
            object.__setattr__(self, "block_size_px", self.tile_size_px)

    @property
    def stride(self) -> int:
        return self.tile_size_px - self.tile_overlap_px


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering ``[0, length)``; the last tile is snapped to end exactly at ``length``.

    A length shorter than ``tile`` gives one (short) tile at 0.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def core_bounds(origins: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """For each tile, the half-open span it "owns": neighbours split their overlap in the middle.

    The spans partition ``[0, length)``; used to place scene labels and to keep each detection once.
    """
    ends = [min(o + tile, length) for o in origins]
    bounds = []
    for i, o in enumerate(origins):
        lo = 0 if i == 0 else (o + ends[i - 1]) // 2
        hi = length if i == len(origins) - 1 else (origins[i + 1] + ends[i]) // 2
        bounds.append((lo, hi))
    return bounds


def ramp_1d(tile: int, overlap: int) -> np.ndarray:
    """Blending weight along one axis: 1 in the middle, linear down to ``1/(overlap+1)`` at the edges."""
    i = np.arange(tile, dtype=np.float32)
    d = np.minimum(i, tile - 1 - i) + 1.0
    return np.minimum(1.0, d / float(overlap + 1)).astype(np.float32)


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """``tile x tile`` separable ramp (strictly positive, so every covered pixel gets a weight)."""
    r = ramp_1d(tile, overlap)
    return np.outer(r, r)


@dataclass(frozen=True)
class Block:
    """An output block ``core`` and the larger ``read`` window (core + halo) it is computed from."""

    core: Window
    read: Window


def iter_blocks(height: int, width: int, block: int, halo: int) -> list[Block]:
    """Row-major blocks of at most ``block x block`` px, each with a halo clipped to the window."""
    blocks = []
    for r0 in range(0, height, block):
        for c0 in range(0, width, block):
            h, w = min(block, height - r0), min(block, width - c0)
            rr0, cc0 = max(0, r0 - halo), max(0, c0 - halo)
            rr1, cc1 = min(height, r0 + h + halo), min(width, c0 + w + halo)
            blocks.append(Block(Window(c0, r0, w, h), Window(cc0, rr0, cc1 - cc0, rr1 - rr0)))
    return blocks


def count_tiles(blocks: list[Block], params: EngineParams) -> int:
    return sum(len(tile_origins(int(b.read.height), params.tile_size_px, params.stride))
               * len(tile_origins(int(b.read.width), params.tile_size_px, params.stride)) for b in blocks)


class RasterSource:
    """Reads normalised float32 pixels and a validity mask from a planned raster.

    ``after`` (change detection) is another plan whose raster is warped onto this one's grid with a
    :class:`~rasterio.vrt.WarpedVRT` (bilinear); its pixels are stacked after this raster's.
    """

    def __init__(self, plan: RasterPlan, mean: list[float], std: list[float], after: RasterPlan | None = None):
        self.plan = plan
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.after = after
        self._src = rasterio.open(plan.path)
        # options.aoi: pixels outside its polygons read as invalid, tiles not overlapping it are not run
        self.aoi_grid = None
        if getattr(plan, "aoi", None) is not None:
            from backend.aoi import AoiGrid

            self.aoi_grid = AoiGrid(plan.aoi, plan.window_transform)
        self.tiles_skipped = 0  # tiles not run because they lie outside the aoi (job statistics)
        self._vrt = None
        self._src_after = None
        if after is not None:
            self._src_after = rasterio.open(after.path)
            self._vrt = WarpedVRT(self._src_after, crs=self._src.crs, transform=self._src.transform,
                                  width=self._src.width, height=self._src.height, resampling=Resampling.bilinear,
                                  add_alpha=True)

    def close(self) -> None:
        for ds in (self._vrt, self._src_after, self._src):
            if ds is not None:
                ds.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _abs(self, win: Window) -> Window:
        w0 = self.plan.window
        return Window(int(w0.col_off + win.col_off), int(w0.row_off + win.row_off), int(win.width), int(win.height))

    def _read_one(self, ds, bands: list[int], win: Window) -> tuple[np.ndarray, np.ndarray]:
        try:
            data = ds.read(bands, window=win, out_dtype="float32")
            masks = ds.read_masks(bands, window=win)
        except RasterioError as exc:
            raise RasterReadError(f"reading {self.plan.path} failed at pixel window {win} ({exc}); the file may "
                                  "be damaged — re-export it") from None
        valid = (masks > 0).any(axis=0)  # GDAL dataset-mask semantics: invalid only where every band is nodata
        x = (data - self.mean) / self.std
        x[:, ~valid] = 0.0  # nodata becomes the mean: it cannot bias neighbours much and is masked later
        return x, valid

    def read(self, win: Window) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Read ``win`` (relative to the processing window) -> ``(x CxHxW, x_after or None, valid HxW)``.

        ``valid`` is False on nodata and outside the aoi (if any); ``x`` keeps the real pixels outside the aoi
        so that predictions near the polygons' edges still see their context.
        """
        aw = self._abs(win)
        x, valid = self._read_one(self._src, self.plan.bands, aw)
        xa = None
        if self._vrt is not None and self.after is not None:
            xa, valid_a = self._read_one(self._vrt, self.after.bands, aw)
            valid = valid & valid_a
        if self.aoi_grid is not None:
            valid &= self.aoi_grid.mask(win)
        return x, xa, valid


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``C x h x w`` to ``C x size x size`` (bottom/right)."""
    c, h, w = x.shape
    if h == size and w == size:
        return x
    out = np.zeros((c, size, size), dtype=np.float32)
    out[:, :h, :w] = x
    return out


def _as_logits(out: object, n: int, size: int) -> np.ndarray:
    arr = out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[0] != n or arr.shape[2:] != (size, size):
        raise RuntimeError(f"the model returned shape {arr.shape}; a dense model must return logits "
                           f"B x K x H x W = {n} x K x {size} x {size}")
    return arr


def predict_block(source_x: np.ndarray, source_xa: np.ndarray | None, model: ModelFn, params: EngineParams,
                  weights: np.ndarray, on_batch: Callable[[int], None], keep: np.ndarray | None = None
                  ) -> np.ndarray:
    """Blend the tiled logits of one read window: ``C x H x W`` -> class-score map ``K x H x W``.

    Args:
        source_x: normalised input ``C x H x W`` (the block's read window).
        source_xa: second input for change detection, or None.
        model: called with ``B x C x T x T`` batches (and the second input), returns ``B x K x T x T``.
        params: tiling.
        weights: ``T x T`` blending weights.
        on_batch: called with the number of tiles after each batch (progress, cancellation).
        keep: optional bool per tile (row-major tile order): tiles marked False are not run (outside the aoi);
            pixels no run tile covers get scores 0 (the caller masks them).

    Returns:
        Weighted mean of the overlapping tiles' logits, ``K x H x W`` float32.
    """
    _, h, w = source_x.shape
    t = params.tile_size_px
    tiles = [(y, x) for y in tile_origins(h, t, params.stride) for x in tile_origins(w, t, params.stride)]
    if keep is not None:
        tiles = [yx for yx, k in zip(tiles, keep, strict=True) if k]
    acc: np.ndarray | None = None
    wsum = np.zeros((h, w), dtype=np.float32)
    for i in range(0, len(tiles), params.batch_size):
        batch = tiles[i: i + params.batch_size]
        xb = np.stack([_pad_to(source_x[:, y: y + t, x: x + t], t) for y, x in batch])
        args = [xb]
        if source_xa is not None:
            args.append(np.stack([_pad_to(source_xa[:, y: y + t, x: x + t], t) for y, x in batch]))
        logits = _as_logits(model(*args), len(batch), t)
        if acc is None:
            acc = np.zeros((logits.shape[1], h, w), dtype=np.float32)
        for (y, x), lg in zip(batch, logits, strict=True):
            th, tw = min(t, h - y), min(t, w - x)
            wt = weights[:th, :tw]
            acc[:, y: y + th, x: x + tw] += lg[:, :th, :tw] * wt
            wsum[y: y + th, x: x + tw] += wt
        on_batch(len(batch))
    if acc is None:  # no tile at all: only for an empty window, which planning refuses
        raise BadRequestError(f"nothing to process in a {h} x {w} px window")
    np.divide(acc, wsum, out=acc, where=wsum > 0)
    return acc


BlockSink = Callable[[Window, np.ndarray, np.ndarray], None]  # (core window, scores KxHxW, valid HxW)


def dense_blocks(source: RasterSource, params: EngineParams) -> list[Block]:
    """The output blocks :func:`run_dense` walks, in its order (indices are stable for a given plan and
    parameters, which is what lets a resumed job skip the blocks its journal lists)."""
    win = source.plan.window
    return iter_blocks(int(win.height), int(win.width), params.block_size_px, params.tile_overlap_px)


def block_tile_keep(source: RasterSource, block: Block, params: EngineParams) -> np.ndarray | None:
    """Which tiles of ``block``'s read window (row-major) overlap the aoi inside the block's core; None: all.

    A tile whose share of the core holds no aoi area only changes pixels that end up nodata (or that the
    neighbouring block computes itself), so it is not run.
    """
    grid = source.aoi_grid
    if grid is None:
        return None
    t, s = params.tile_size_px, params.stride
    h, w = int(block.read.height), int(block.read.width)
    yy, xx = np.meshgrid(tile_origins(h, t, s), tile_origins(w, t, s), indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    ro, co = int(block.read.row_off), int(block.read.col_off)
    cr0, cc0 = int(block.core.row_off), int(block.core.col_off)
    cr1, cc1 = cr0 + int(block.core.height), cc0 + int(block.core.width)
    r0, c0 = np.maximum(ro + yy, cr0), np.maximum(co + xx, cc0)
    r1, c1 = np.minimum(ro + yy + np.minimum(t, h - yy), cr1), np.minimum(co + xx + np.minimum(t, w - xx), cc1)
    nonempty = (r1 > r0) & (c1 > c0)
    return nonempty & grid.overlaps(r0, c0, r1, c1)


def run_dense(source: RasterSource, model: ModelFn, params: EngineParams, sink: BlockSink,
              progress: ProgressFn, skip: Collection[int] = (), n_classes: int | None = None) -> None:
    """Run a dense model over the whole processing window, block by block, calling ``sink`` per block.

    ``sink`` receives the block's core window and its blended scores (``K x h x w``) and validity mask; it
    runs on a writer thread, one block behind, so it must not touch the model. Blocks whose index (in
    :func:`dense_blocks` order) is in ``skip`` are neither read nor run (a resumed job already has them);
    their tiles count as done for progress.

    With an aoi, tiles that do not overlap it are not run (:func:`block_tile_keep`, counted in
    ``source.tiles_skipped``); a block with no such tile is not even read: given ``n_classes``, the sink gets
    zero scores and an all-False mask for it (without ``n_classes`` it is run as usual).
    """
    all_blocks = dense_blocks(source, params)
    keeps = [block_tile_keep(source, b, params) for b in all_blocks]
    per_block = [count_tiles([b], params) if kp is None else int(kp.sum())
                 for b, kp in zip(all_blocks, keeps, strict=True)]
    total = sum(per_block)
    skip_set = set(skip)
    todo = [i for i in range(len(all_blocks)) if i not in skip_set]
    done = sum(per_block[i] for i in skip_set if i < len(all_blocks))
    source.tiles_skipped += sum(len(keeps[i]) - int(keeps[i].sum()) for i in todo if keeps[i] is not None)
    if not todo:
        progress(done, total)
        return
    weights = blend_weights(params.tile_size_px, params.tile_overlap_px)

    def outside(i: int) -> bool:
        kp = keeps[i]
        return kp is not None and n_classes is not None and not kp.any()

    def load(i: int):
        return None if outside(i) else source.read(all_blocks[i].read)

    def tick(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    with ThreadPoolExecutor(1, thread_name_prefix="rsfm-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="rsfm-write") as writer:
        pending_read: Future = reader.submit(load, todo[0])
        pending_write: Future | None = None
        try:
            for n, bi in enumerate(todo):
                block = all_blocks[bi]
                item = pending_read.result()
                if n + 1 < len(todo):
                    pending_read = reader.submit(load, todo[n + 1])
                hh, ww = int(block.core.height), int(block.core.width)
                if item is None:  # entirely outside the aoi: nodata, no read, no model call
                    k = n_classes or 1
                    core_scores = np.broadcast_to(np.zeros((k, 1, 1), np.float32), (k, hh, ww))
                    core_valid = np.zeros((hh, ww), dtype=bool)
                else:
                    x, xa, valid = item
                    kp = keeps[bi]
                    if kp is not None and not kp.any():  # outside the aoi, but no n_classes: run it all
                        kp = None
                    scores = predict_block(x, xa, model, params, weights, tick, keep=kp)
                    # crop the halo: core window relative to the read window
                    r0 = int(block.core.row_off - block.read.row_off)
                    c0 = int(block.core.col_off - block.read.col_off)
                    core_scores = scores[:, r0: r0 + hh, c0: c0 + ww]
                    core_valid = valid[r0: r0 + hh, c0: c0 + ww]
                if pending_write is not None:
                    pending_write.result()  # at most one block waits for the disk
                pending_write = writer.submit(sink, block.core, core_scores, core_valid)
            if pending_write is not None:
                pending_write.result()
        except BaseException:
            pending_read.cancel()
            raise


@dataclass(frozen=True)
class TileInfo:
    """One tile of the sparse grid: origin (row, col), size and the span it owns (for de-duplication)."""

    row: int
    col: int
    height: int
    width: int
    core_rows: tuple[int, int]
    core_cols: tuple[int, int]


def sparse_tiles(height: int, width: int, params: EngineParams) -> list[TileInfo]:
    t = params.tile_size_px
    ys, xs = tile_origins(height, t, params.stride), tile_origins(width, t, params.stride)
    cy, cx = core_bounds(ys, t, height), core_bounds(xs, t, width)
    return [TileInfo(y, x, min(t, height - y), min(t, width - x), cy[i], cx[j])
            for i, y in enumerate(ys) for j, x in enumerate(xs)]


def tile_batches(height: int, width: int, params: EngineParams, aoi_grid=None) -> list[list[TileInfo]]:
    """The batches :func:`iter_tile_batches` walks, in its order: row-major tiles, ``batch_size`` at a time.

    Batch indices are stable for a given window and parameters, which is what lets a resumed sparse job skip
    the batches its journal lists (and keeps every other batch's composition, hence its model outputs).
    With ``aoi_grid`` (``RasterSource.aoi_grid``), only tiles whose owned span overlaps the aoi are batched.
    """
    tiles = sparse_tiles(height, width, params)
    if aoi_grid is not None and tiles:
        keep = aoi_grid.overlaps([ti.core_rows[0] for ti in tiles], [ti.core_cols[0] for ti in tiles],
                                 [ti.core_rows[1] for ti in tiles], [ti.core_cols[1] for ti in tiles])
        tiles = [ti for ti, k in zip(tiles, keep, strict=True) if k]
    return [tiles[i: i + params.batch_size] for i in range(0, len(tiles), params.batch_size)]


def iter_tile_batches(source: RasterSource, params: EngineParams, skip: Collection[int] = ()
                      ) -> Iterator[tuple[list[TileInfo], list[np.ndarray], np.ndarray]]:
    """Yield ``(tiles, model_args, valid)`` batches over the processing window, read one batch ahead.

    ``model_args`` is ``[x]`` (``B x C x T x T``, short tiles zero-padded), ``valid`` is ``B x T x T`` (False
    in the padding and on nodata). Batches whose index (in :func:`tile_batches` order) is in ``skip`` are
    neither read nor yielded (a resumed job already has their results).
    """
    win = source.plan.window
    t = params.tile_size_px
    skip_set = set(skip)
    all_batches = tile_batches(int(win.height), int(win.width), params, source.aoi_grid)
    # tiles outside the aoi are not in any batch
    source.tiles_skipped += n_grid(int(win.height), int(win.width), params) - sum(len(b) for b in all_batches)
    batches = [b for i, b in enumerate(all_batches) if i not in skip_set]

    def load(batch: list[TileInfo]):
        xs, xas, vs = [], [], []
        for ti in batch:
            x, xa, valid = source.read(Window(ti.col, ti.row, ti.width, ti.height))
            xs.append(_pad_to(x, t))
            if xa is not None:
                xas.append(_pad_to(xa, t))
            v = np.zeros((t, t), dtype=bool)
            v[: ti.height, : ti.width] = valid
            vs.append(v)
        args = [np.stack(xs)] + ([np.stack(xas)] if xas else [])
        return batch, args, np.stack(vs)

    with ThreadPoolExecutor(1, thread_name_prefix="rsfm-read") as reader:
        nxt = reader.submit(load, batches[0]) if batches else None
        for i in range(len(batches)):
            item = nxt.result()  # type: ignore[union-attr] - set for every i < len(batches)
            nxt = reader.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
            yield item


def n_sparse_tiles(plan: RasterPlan, params: EngineParams) -> int:
    """Tiles of the sparse grid (all of them: tiles outside an aoi included)."""
    t, s = params.tile_size_px, params.stride
    return len(tile_origins(int(plan.window.height), t, s)) * len(tile_origins(int(plan.window.width), t, s))


def halo_overhead(height: int, width: int, params: EngineParams) -> float:
    """Tiles run by the block scheme divided by tiles of one global grid (>= 1; for the docs/bench)."""
    blocks = iter_blocks(height, width, params.block_size_px, params.tile_overlap_px)
    return count_tiles(blocks, params) / max(1, n_grid(height, width, params))


def n_grid(height: int, width: int, params: EngineParams) -> int:
    t, s = params.tile_size_px, params.stride
    return len(tile_origins(height, t, s)) * len(tile_origins(width, t, s))


def overlap_fraction(plan: RasterPlan, after: RasterPlan) -> float:
    """Fraction of ``plan``'s processing window covered by ``after``'s footprint (in ``plan``'s CRS)."""
    from rasterio.warp import transform_bounds

    with rasterio.open(after.path) as src:
        b = transform_bounds(src.crs, rasterio.crs.CRS.from_wkt(plan.crs_wkt), *src.bounds, densify_pts=21)
    left, bottom, right, top = rasterio.windows.bounds(plan.window, plan.transform)
    ix = max(0.0, min(right, b[2]) - max(left, b[0]))
    iy = max(0.0, min(top, b[3]) - max(bottom, b[1]))
    area = (right - left) * (top - bottom)
    return float(ix * iy / area) if area > 0 and math.isfinite(area) else 0.0
