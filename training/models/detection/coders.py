"""Box coders: regression targets relative to anchors / proposals, and back.

* :class:`DeltaXYWHCoder`: horizontal boxes (Faster / Mask R-CNN), ``(dx, dy, dw, dh)``.
* :class:`MidpointOffsetCoder`: Oriented R-CNN's RPN (Xie et al., ICCV 2021): horizontal anchor ->
  oriented box as ``(dx, dy, dw, dh, da, db)``, where ``da``/``db`` are the offsets of the box's top-most
  and right-most corners from the midpoints of the top and right edges of its horizontal hull.
* :class:`DeltaXYWHACoder`: rotated proposal -> rotated box, ``(dx, dy, dw, dh, da)``, with the centre offset
  projected on the proposal's axes (``proj_xy``) and the side swap that picks the nearest angle
  (``edge_swap``), as MMRotate's ``DeltaXYWHTRBBoxCoder`` (le90). Its angle delta keeps MMRotate's
  clockwise sign (``da = -(a_gt - a_proposal)``), so every delta has the same meaning as in MMRotate.

Deltas are normalised ``(delta - means) / stds``. Rotated boxes follow :mod:`training.ops.rotated`
(cx, cy, w, h, angle in radians counter-clockwise on the image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from training.ops.rotated import norm_angle, poly_to_rbox, rbox_to_corners, regularize_rboxes

# Largest |log| size change a decoder accepts (MMDet: log(1000 / 16)), to keep exp() finite.
_MAX_LOG_RATIO = abs(math.log(16 / 1000))


class _Normaliser:
    def __init__(self, means: Sequence[float], stds: Sequence[float]) -> None:
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)

    def _norm(self, deltas: torch.Tensor) -> torch.Tensor:
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def _denorm(self, deltas: torch.Tensor) -> torch.Tensor:
        return deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)


def _xyxy_to_cxcywh(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


class DeltaXYWHCoder(_Normaliser):
    """``xyxy`` anchors/proposals ``(N, 4)`` <-> ``xyxy`` boxes via 4-d deltas."""

    def __init__(self, means: Sequence[float] = (0.0,) * 4, stds: Sequence[float] = (1.0,) * 4) -> None:
        super().__init__(means, stds)

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        px, py, pw, ph = _xyxy_to_cxcywh(anchors)
        gx, gy, gw, gh = _xyxy_to_cxcywh(boxes)
        d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], -1)
        return self._norm(d)

    def decode(
        self, anchors: torch.Tensor, deltas: torch.Tensor, image_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Boxes ``(N, 4)`` xyxy; clipped to ``image_size = (H, W)`` if given."""
        dx, dy, dw, dh = self._denorm(deltas).unbind(-1)
        px, py, pw, ph = _xyxy_to_cxcywh(anchors)
        dw, dh = dw.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO), dh.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        gx, gy = px + dx * pw, py + dy * ph
        gw, gh = pw * dw.exp(), ph * dh.exp()
        out = torch.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], -1)
        if image_size is not None:
            h, w = image_size
            out = torch.stack([out[..., 0].clamp(0, w), out[..., 1].clamp(0, h),
                               out[..., 2].clamp(0, w), out[..., 3].clamp(0, h)], -1)  # fmt: skip
        return out


class MidpointOffsetCoder(_Normaliser):
    """Horizontal anchors ``(N, 4)`` xyxy <-> rotated boxes ``(N, 5)`` via 6-d midpoint-offset deltas."""

    def __init__(
        self, means: Sequence[float] = (0.0,) * 6, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5)
    ) -> None:
        super().__init__(means, stds)

    def encode(self, anchors: torch.Tensor, rboxes: torch.Tensor) -> torch.Tensor:
        corners = rbox_to_corners(rboxes)  # (N, 4, 2)
        xs, ys = corners[..., 0], corners[..., 1]
        x1, y1 = xs.amin(-1), ys.amin(-1)
        x2, y2 = xs.amax(-1), ys.amax(-1)
        gx, gy, gw, gh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        # Top-most corner (the right one of a tied top edge); the right-most corner is the next one
        # clockwise on screen (the corner order of rbox_to_corners), which keeps the pair consistent for
        # nearly axis-aligned boxes where a tolerance test on coordinates could pick corners of two edges.
        top = torch.argmin(ys - 1e-6 * (xs - x1[:, None]) / gw.clamp(min=1e-6)[:, None], dim=-1)
        top_x = xs.gather(-1, top[:, None])[:, 0]
        right_y = ys.gather(-1, ((top + 1) % 4)[:, None])[:, 0]
        px, py, pw, ph = _xyxy_to_cxcywh(anchors)
        d = torch.stack(
            [(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph),
             (top_x - gx) / gw, (right_y - gy) / gh], -1)  # fmt: skip
        return self._norm(d)

    def decode(self, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Regularised rotated boxes ``(N, 5)``: decode the quad, equalise its diagonals, take the rectangle."""
        dx, dy, dw, dh, da, db = self._denorm(deltas).unbind(-1)
        px, py, pw, ph = _xyxy_to_cxcywh(anchors)
        dw, dh = dw.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO), dh.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        da, db = da.clamp(-0.5, 0.5), db.clamp(-0.5, 0.5)
        gx, gy = px + dx * pw, py + dy * ph
        gw, gh = pw * dw.exp(), ph * dh.exp()
        x1, y1, x2, y2 = gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2
        quad = torch.stack(
            [gx + da * gw, y1, x2, gy + db * gh, gx - da * gw, y2, x1, gy - db * gh], -1
        ).view(-1, 4, 2)
        # The quad is a parallelogram centred on (gx, gy); scaling its half-diagonals to the same length
        # turns it into a rectangle.
        centre = torch.stack([gx, gy], -1)[:, None]
        rel = quad - centre
        half_diag = rel.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        quad = centre + rel * half_diag.amax(dim=1, keepdim=True) / half_diag
        return poly_to_rbox(quad.flatten(1))


class DeltaXYWHACoder(_Normaliser):
    """Rotated proposals ``(N, 5)`` <-> rotated boxes ``(N, 5)`` via 5-d deltas (proj_xy, edge_swap)."""

    def __init__(
        self, means: Sequence[float] = (0.0,) * 5, stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1)
    ) -> None:
        super().__init__(means, stds)

    def encode(self, proposals: torch.Tensor, rboxes: torch.Tensor) -> torch.Tensor:
        px, py, pw, ph, pa = proposals.unbind(-1)
        gx, gy, gw, gh, ga = rboxes.unbind(-1)
        cos, sin = torch.cos(pa), torch.sin(pa)
        ox, oy = gx - px, gy - py
        # Offsets along the proposal's axes u = (cos, -sin) and v = (sin, cos).
        dx = (ox * cos - oy * sin) / pw
        dy = (ox * sin + oy * cos) / ph
        # The same rectangle is (w, h, a) or (h, w, a + pi/2); regress the representation nearest in angle.
        d1 = norm_angle(ga - pa)
        d2 = norm_angle(ga - pa + math.pi / 2)
        keep = d1.abs() < d2.abs()
        w_t = torch.where(keep, gw, gh)
        h_t = torch.where(keep, gh, gw)
        da = torch.where(keep, d1, d2)
        # Stored with MMRotate's (clockwise) sign, so regression weights of MTP / MMRotate heads carry over.
        d = torch.stack([dx, dy, torch.log(w_t / pw), torch.log(h_t / ph), -da], -1)
        return self._norm(d)

    def decode(self, proposals: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Regularised rotated boxes ``(N, 5)``."""
        dx, dy, dw, dh, da = self._denorm(deltas).unbind(-1)
        px, py, pw, ph, pa = proposals.unbind(-1)
        dw, dh = dw.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO), dh.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        cos, sin = torch.cos(pa), torch.sin(pa)
        ox, oy = dx * pw, dy * ph
        gx = px + ox * cos + oy * sin
        gy = py - ox * sin + oy * cos
        out = torch.stack([gx, gy, pw * dw.exp(), ph * dh.exp(), pa - da], -1)  # da is clockwise, see encode
        return regularize_rboxes(out)
