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


def write_many_raw(folder: Path, groups: int = 4600, per_group: int = 5) -> None:
    """Raw files of several MB (train: ``groups`` records of ``per_group`` impressions, ~4.7 MB
    of skeleton text at the defaults; test: a quarter), so that 1 MiB chunks give the worker
    pools four chunks and more. A bad line every 997 lines, in every chunk, and features of an
    unknown field make the quarantine and the counts depend on the lines before each chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n_groups in (("train", groups), ("test", groups // 4)):
        sk, cm = [], []
        for g in range(n_groups):
            cfi = f"{split}{g:05d}"
            cfeats = [feat("101", 1000 + g % 97), feat("109_14", 50 + g % 31, "0.693147")]
            cm.append(f"{cfi},{len(cfeats)},{chr(1).join(cfeats)}")
            for i in range(per_group):
                n = g * per_group + i
                sfeats = [feat("205", 7000 + n % 1013), feat("301", 1 + i % 3), feat("999", n)]
                sfeats += [feat("210", 300 + (n * 7 + k) % 211) for k in range(12)]
                click = int((g + i) % 4 == 0)
                conv = int(click and g % 3 == 0)
                sid = (0 if split == "train" else 10**7) + n
                sk.append(f"{sid},{click},{conv},{cfi},{len(sfeats)},{chr(1).join(sfeats)}")
                if n % 997 == 500:
                    sk.append(f"{sid},x,0,{cfi},1,{feat('205', 1)}")  # unparsable click
        (folder / SKELETON.format(split)).write_text("\n".join(sk) + "\n")
        (folder / COMMON.format(split)).write_text("\n".join(cm) + "\n")
