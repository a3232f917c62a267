"""Split rules shared by the trainers and the pretraining sources: image-file number ranges and folder groups.

A *range* ``"471-520"`` selects images by the last number in their file name (NWPU VHR-10 ``471.jpg``); a
*group* is a folder name on the image's path (Dubai ``Tile 1``). Both are what the finetuning commands use for
``--test-range`` / ``--test-groups``, so pretraining can hold back exactly the images a downstream test uses.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["file_number", "held_out", "parse_range"]

_NUM_RE = re.compile(r"(\d+)")
_RANGE_RE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


def parse_range(text: str) -> tuple[int, int]:
    """``"1-440"`` -> ``(1, 440)`` (inclusive image-file numbers)."""
    m = _RANGE_RE.fullmatch(text or "")
    if not m or int(m.group(1)) > int(m.group(2)):
        raise ValueError(f"image range {text!r} must look like 'FIRST-LAST' with FIRST <= LAST, e.g. '1-440'")
    return int(m.group(1)), int(m.group(2))


def file_number(file_name: str | Path) -> int:
    """The last number in a file's stem: ``"images/471.jpg"`` -> 471."""
    nums = _NUM_RE.findall(Path(file_name).stem)
    if not nums:
        raise ValueError(f"image file {str(file_name)!r} has no number in its name; split ranges need numbered files")
    return int(nums[-1])


def held_out(path: Path, root: Path, spec: str) -> bool:
    """Whether the image at ``path`` (under ``root``) is held out by ``spec``.

    ``spec`` is either one range ``"FIRST-LAST"`` of file numbers, or a comma list of group (folder) names
    matched against the folders between ``root`` and the file (``"Tile 1,Tile 2"``).
    """
    if _RANGE_RE.fullmatch(spec):
        lo, hi = parse_range(spec)
        return lo <= file_number(path) <= hi
    groups = {g.strip() for g in spec.split(",") if g.strip()}
    if not groups:
        raise ValueError(f"hold-out {spec!r} is empty; give 'FIRST-LAST' file numbers or folder names")
    return bool(groups & set(path.relative_to(root).parts[:-1]))
