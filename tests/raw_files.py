"""Hand-written raw Ali-CCP files for tests that need exact, known content."""

from __future__ import annotations

from pathlib import Path

SKELETON = "sample_skeleton_{}.csv"
COMMON = "common_features_{}.csv"


def feat(field: str, fid: int, value: str = "1.0") -> str:
    return f"{field}\x02{fid}\x03{value}"


def write_raw(folder: Path, bad_train_lines: list[str] | None = None) -> None:
    """Hand-written raw files: 40 groups of 5 impressions, plus the given bad lines."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        sk, cm = [], []
        for g in range(40):
            cfi = f"{split}{g:04d}"
            cfeats = [feat("101", 1000 + g % 7), feat("109_14", 50 + g % 3, "0.693147")]
            cm.append(f"{cfi},{len(cfeats)},{chr(1).join(cfeats)}")
            for i in range(5):
                click = int((g + i) % 4 == 0)
                conv = int(click and g % 3 == 0)
                sfeats = [feat("205", 7000 + (g * 5 + i) % 11), feat("301", 1 + i % 2)]
                sid = (0 if split == "train" else 10_000) + g * 5 + i
                sk.append(f"{sid},{click},{conv},{cfi},{len(sfeats)},{chr(1).join(sfeats)}")
        if split == "train" and bad_train_lines:
            sk.extend(bad_train_lines)
        (folder / SKELETON.format(split)).write_text("\n".join(sk) + "\n")
        (folder / COMMON.format(split)).write_text("\n".join(cm) + "\n")
