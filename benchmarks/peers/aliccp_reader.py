"""The peers' own Ali-CCP reader and encoder, independent of ``rec_pipeline``.

Reads the four raw files (docs/model.md, Data: ``sample_skeleton_{train,test}.csv`` and
``common_features_{train,test}.csv``, comma-separated, no header, ``feature_list`` made of
``field\\x02id\\x03value`` tokens joined by ``\\x01``) with pyarrow's streaming CSV reader and
vectorised Arrow string kernels, then encodes them the way a user of DeepCTR-style libraries
would:

* **validation split**: 10 % of the training file's distinct ``common_feature_index`` values
  (seeded), with every sample of those records; no negative sampling anywhere;
* **vocabularies** per field from the remaining training rows only, min count 1; index 0 is
  padding and every id unseen there (validation or test) maps to 0;
* **single-valued fields** (at most one id per row in the training file) become one sparse id
  column each; **multi-valued fields** (behaviour lists such as 109_14 / 110_14 / 127_14 /
  150_14 on the common side, 210 / 853 on the skeleton side) become variable-length id lists
  truncated to ``max_len`` ids (the largest weights first, ties in file order) and are
  mean-pooled over their known ids by the models;
* the one-id weighted crosses **508 / 509 / 702** are also kept as dense values (their weight, 0
  when absent);
* a sample's common features come from its record in the same split's common file (a sample
  whose record is missing gets all common features absent).

:func:`load_encoded` caches the result under a work folder, keyed by the raw files' paths, sizes
and modification times, so each raw folder is read and encoded once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

READER_VERSION = 1
RAW_FILES = {
    ("train", "skeleton"): "sample_skeleton_train.csv",
    ("train", "common"): "common_features_train.csv",
    ("test", "skeleton"): "sample_skeleton_test.csv",
    ("test", "common"): "common_features_test.csv",
}
SKELETON_COLUMNS = [
    "sample_id",
    "click",
    "conversion",
    "common_feature_index",
    "feature_num",
    "feature_list",
]
COMMON_COLUMNS = ["common_feature_index", "feature_num", "feature_list"]
#: One-id weighted cross fields whose weight is also fed as a dense value.
CROSS_DENSE_FIELDS = ("508", "509", "702")
SPLITS = ("train", "valid", "test")
MATRIX_KEYS = ("single", "multi", "dense")


def _log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ parsing
@dataclass
class ParsedFile:
    """One raw file: per-row columns and the features in long form (truncated per field)."""

    columns: dict[str, pa.Array]  # per row: labels/sample_id (skeleton), common_feature_index
    row: np.ndarray  # int64, row of each kept feature
    field: np.ndarray  # int16, field code (index into the reader's field names)
    fid: np.ndarray  # int64, raw feature id
    value: np.ndarray  # float32, the feature's value
    rank: np.ndarray  # int16, rank inside its (row, field) list after sorting by weight
    max_len: dict[str, int]  # field -> longest list in a row, before truncation
    n_rows: int
    bad_tokens: int


class FieldCodes:
    """Field name <-> small integer code, shared by every file of one run."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.code: dict[str, int] = {}

    def lookup(self, names: list[str]) -> np.ndarray:
        for n in names:
            if n not in self.code:
                self.code[n] = len(self.names)
                self.names.append(n)
        return np.array([self.code[n] for n in names], dtype=np.int16)


def _has_header(path: Path) -> bool:
    with open(path, "rb") as f:
        first = f.readline().split(b",", 1)[0].strip()
    return first in (b"sample_id", b"common_feature_index")


def _explode(feature_list: pa.Array, codes: FieldCodes):
    """(row in chunk, field code, id, value, n bad tokens) of a chunk's feature lists."""
    lists = pc.split_pattern(feature_list, "\x01")
    row = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    tokens = pc.list_flatten(lists)
    parts = pc.split_pattern(tokens, "\x02", max_splits=1)
    ok = pc.equal(pc.list_value_length(parts), 2)
    rest = pc.list_element(pc.filter(parts, ok), 1)
    inner = pc.split_pattern(rest, "\x03", max_splits=1)
    ok2 = pc.equal(pc.list_value_length(inner), 2)
    ok_np = np.asarray(ok, dtype=bool)
    row = row[ok_np]
    fields = pc.list_element(pc.filter(parts, ok), 0)
    if not pc.all(ok2).as_py():
        row = row[np.asarray(ok2, dtype=bool)]
        fields = pc.filter(fields, ok2)
        inner = pc.filter(inner, ok2)
    bad = len(tokens) - len(row)
    fid = np.asarray(pc.cast(pc.list_element(inner, 0), pa.int64()))
    value = np.asarray(pc.cast(pc.list_element(inner, 1), pa.float32()))
    enc = pc.dictionary_encode(fields)
    lut = codes.lookup(enc.dictionary.to_pylist())
    field = lut[np.asarray(enc.indices, dtype=np.int64)]
    # An empty feature_list splits into one empty token: drop it without calling it bad.
    empty = int(pc.sum(pc.equal(tokens, "")).as_py() or 0)
    return row, field, fid, value, bad - empty


def _truncate(row, field, fid, value, max_len: int, n_fields: int):
    """Keep at most ``max_len`` features per (row, field): largest value first, then file order."""
    pos = np.arange(len(row), dtype=np.int64)
    order = np.lexsort((pos, -value, field, row))
    row, field, fid, value = row[order], field[order], fid[order], value[order]
    if len(row) == 0:
        rank = np.zeros(0, dtype=np.int64)
        lens = np.zeros(n_fields, dtype=np.int64)
        return row, field, fid, value, rank, lens
    new = np.ones(len(row), dtype=bool)
    new[1:] = (row[1:] != row[:-1]) | (field[1:] != field[:-1])
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    rank = np.arange(len(row), dtype=np.int64) - starts[group]
    sizes = np.diff(np.append(starts, len(row)))
    lens = np.zeros(n_fields, dtype=np.int64)
    np.maximum.at(lens, field[starts].astype(np.int64), sizes)
    keep = rank < max_len
    return row[keep], field[keep], fid[keep], value[keep], rank[keep], lens


def parse_file(path: Path, kind: str, codes: FieldCodes, max_len: int) -> ParsedFile:
    """Parse one raw file (``kind`` 'skeleton' or 'common') in streaming blocks."""
    names = SKELETON_COLUMNS if kind == "skeleton" else COMMON_COLUMNS
    types = {n: pa.string() for n in names}
    if kind == "skeleton":
        types.update({"sample_id": pa.int64(), "click": pa.int8(), "conversion": pa.int8()})
    types["feature_num"] = pa.int64()
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(
            column_names=names, skip_rows=int(_has_header(path)), block_size=16 << 20
        ),
        parse_options=pacsv.ParseOptions(delimiter=",", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )
    keep_cols = [n for n in names if n not in ("feature_list", "feature_num")]
    cols: dict[str, list] = {n: [] for n in keep_cols}
    parts: dict[str, list] = {k: [] for k in ("row", "field", "fid", "value", "rank")}
    max_lens = np.zeros(0, dtype=np.int64)
    n_rows = bad = 0
    for batch in reader:
        for n in keep_cols:
            cols[n].append(batch.column(n))
        row, field, fid, value, nbad = _explode(batch.column("feature_list"), codes)
        bad += nbad
        n_fields = len(codes.names)
        row, field, fid, value, rank, lens = _truncate(row, field, fid, value, max_len, n_fields)
        if len(max_lens) < n_fields:
            max_lens = np.append(max_lens, np.zeros(n_fields - len(max_lens), dtype=np.int64))
        max_lens = np.maximum(max_lens, lens)
        parts["row"].append(row + n_rows)
        parts["field"].append(field)
        parts["fid"].append(fid)
        parts["value"].append(value)
        parts["rank"].append(rank.astype(np.int16))
        n_rows += batch.num_rows
    dtypes = {"row": np.int64, "field": np.int16, "fid": np.int64, "value": np.float32}
    dtypes["rank"] = np.int16
    arrays = {
        k: (np.concatenate(v) if v else np.zeros(0, dtype=dtypes[k])) for k, v in parts.items()
    }
    return ParsedFile(
        columns={n: pa.chunked_array(v, type=types[n]).combine_chunks() for n, v in cols.items()},
        row=arrays["row"],
        field=arrays["field"],
        fid=arrays["fid"],
        value=arrays["value"],
        rank=arrays["rank"],
        max_len={codes.names[i]: int(m) for i, m in enumerate(max_lens) if m > 0},
        n_rows=n_rows,
        bad_tokens=bad,
    )


# ----------------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    """Encoded splits (``train`` = training rows without the validation records) and layout."""

    splits: dict[str, dict[str, np.ndarray]]
    meta: dict


def _side_matrices(
    parsed: ParsedFile, codes: FieldCodes, layout: dict, side: str, vocabs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """single [n, S] / multi [n, M, L] int32 ids and dense [n, D] float32 of one file's rows.

    Only the fields of ``side`` ('skeleton' or 'common'), in layout order.
    """
    n, max_len = parsed.n_rows, layout["max_len"]
    cols = {k: [f for f in layout[k] if layout["side"][f] == side] for k in MATRIX_KEYS}
    single = np.zeros((n, len(cols["single"])), dtype=np.int32)
    multi = np.zeros((n, len(cols["multi"]), max_len), dtype=np.int32)
    dense = np.zeros((n, len(cols["dense"])), dtype=np.float32)
    for j, name in enumerate(cols["single"]):
        m = (parsed.field == codes.code.get(name, -1)) & (parsed.rank == 0)
        single[parsed.row[m], j] = _index(vocabs[name], parsed.fid[m])
    for j, name in enumerate(cols["multi"]):
        m = parsed.field == codes.code.get(name, -1)
        multi[parsed.row[m], j, parsed.rank[m]] = _index(vocabs[name], parsed.fid[m])
    for j, name in enumerate(cols["dense"]):
        m = (parsed.field == codes.code.get(name, -1)) & (parsed.rank == 0)
        dense[parsed.row[m], j] = parsed.value[m]
    return {"single": single, "multi": multi, "dense": dense}


def _index(vocab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """1-based position of ``ids`` in the sorted ``vocab``; 0 for ids not in it."""
    if len(vocab) == 0:
        return np.zeros(len(ids), dtype=np.int32)
    pos = np.searchsorted(vocab, ids)
    pos = np.minimum(pos, len(vocab) - 1)
    return np.where(vocab[pos] == ids, pos + 1, 0).astype(np.int32)


def encode(
    raw_dir: Path, *, max_len: int = 10, valid_fraction: float = 0.1, seed: int = 20260127
) -> Encoded:
    """Read the four raw files of ``raw_dir`` and encode train / valid / test (module doc)."""
    codes = FieldCodes()
    parsed: dict[tuple[str, str], ParsedFile] = {}
    for (split, kind), name in RAW_FILES.items():
        t0 = time.perf_counter()
        parsed[split, kind] = p = parse_file(Path(raw_dir) / name, kind, codes, max_len)
        _log(
            f"read {name}: {p.n_rows:,} rows, {len(p.row):,} features kept"
            f" ({p.bad_tokens} malformed tokens) in {time.perf_counter() - t0:.1f} s"
        )
    tr_s, tr_c = parsed["train", "skeleton"], parsed["train", "common"]

    # Validation: a seeded 10 % of the training file's distinct common_feature_index values.
    cfi = tr_s.columns["common_feature_index"]
    distinct = pc.unique(cfi)
    distinct = distinct.take(pc.sort_indices(distinct))
    rng = np.random.default_rng(seed)
    chosen = distinct.filter(pa.array(rng.random(len(distinct)) < valid_fraction))
    is_valid = np.asarray(pc.is_in(cfi, value_set=chosen), dtype=bool)

    # Each sample's row in its split's common file (-1: no such record).
    rec = {}
    for split in ("train", "test"):
        s, c = parsed[split, "skeleton"], parsed[split, "common"]
        idx = pc.index_in(
            s.columns["common_feature_index"], value_set=c.columns["common_feature_index"]
        )
        rec[split] = np.asarray(pc.fill_null(idx, -1), dtype=np.int64)

    # Layout: fields seen in the training files; multi-valued when a training row had > 1 id.
    sides = {"skeleton": tr_s, "common": tr_c}
    layout = {"max_len": max_len, "single": [], "multi": [], "dense": [], "side": {}}
    for side, p in sides.items():
        for name in sorted(p.max_len, key=_field_order):
            layout["side"][name] = side
            layout["multi" if p.max_len[name] > 1 else "single"].append(name)
    # Lists are in side order (skeleton fields, then common ones), as the matrices' columns.
    layout["dense"] = [f for f in layout["single"] if f in CROSS_DENSE_FIELDS]

    # Vocabularies from the training rows outside the validation records (min count 1).
    fit_rows = {"skeleton": ~is_valid}
    used = np.zeros(tr_c.n_rows + 1, dtype=bool)
    used[rec["train"][~is_valid]] = True
    fit_rows["common"] = used[: tr_c.n_rows]
    vocabs = {}
    for side, p in sides.items():
        in_fit = fit_rows[side][p.row]
        for name, s in layout["side"].items():
            if s == side:
                m = in_fit & (p.field == codes.code[name])
                vocabs[name] = np.unique(p.fid[m])

    mats = {
        (split, kind): _side_matrices(parsed[split, kind], codes, layout, kind, vocabs)
        for split in ("train", "test")
        for kind in ("skeleton", "common")
    }
    splits = {}
    for split, file_split, rows in (
        ("train", "train", np.flatnonzero(~is_valid)),
        ("valid", "train", np.flatnonzero(is_valid)),
        ("test", "test", np.arange(parsed["test", "skeleton"].n_rows)),
    ):
        s = parsed[file_split, "skeleton"]
        sk, cm = mats[file_split, "skeleton"], mats[file_split, "common"]
        r = rec[file_split][rows]
        # Missing record -> an appended all-absent row.
        r = np.where(r < 0, parsed[file_split, "common"].n_rows, r)
        out = {
            "sample_id": np.asarray(s.columns["sample_id"])[rows],
            "click": np.asarray(s.columns["click"])[rows].astype(np.int8),
            "conversion": np.asarray(s.columns["conversion"])[rows].astype(np.int8),
        }
        for key in MATRIX_KEYS:
            common = np.concatenate([cm[key], np.zeros_like(cm[key][:1])])[r]
            out[key] = np.concatenate([sk[key][rows], common], axis=1)
        splits[split] = out
    meta = {
        "layout": layout,
        "vocab_size": {name: len(v) + 1 for name, v in vocabs.items()},
        "max_len_seen": {**tr_c.max_len, **tr_s.max_len},
        "rows": {k: int(len(v["click"])) for k, v in splits.items()},
        "clicks": {k: int(v["click"].sum()) for k, v in splits.items()},
        "conversions": {k: int(v["conversion"].sum()) for k, v in splits.items()},
        "missing_common_record": {k: int((v < 0).sum()) for k, v in rec.items()},
        "inconsistent_rows": {
            k: int(((v["click"] == 0) & (v["conversion"] == 1)).sum()) for k, v in splits.items()
        },
        "valid_records": len(chosen),
        "malformed_tokens": {f"{a}_{b}": p.bad_tokens for (a, b), p in parsed.items()},
    }
    return Encoded(splits=splits, meta=meta)


def _field_order(name: str):
    head = name.split("_")[0]
    return (int(head) if head.isdigit() else 1 << 30, name)


# -------------------------------------------------------------------------------------- cache
def _fingerprint(raw_dir: Path, **options) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": READER_VERSION, **options}, sort_keys=True).encode())
    for name in RAW_FILES.values():
        path = (Path(raw_dir) / name).resolve()
        st = path.stat()
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_encoded(raw_dir: Path, work_dir: Path, *, max_len: int = 10, seed: int = 20260127):
    """Encoded splits of ``raw_dir``, from the cache under ``work_dir`` when present."""
    key = _fingerprint(raw_dir, max_len=max_len, seed=seed)
    folder = Path(work_dir) / f"peer_encoding_{key}"
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        splits = {s: dict(np.load(folder / f"{s}.npz")) for s in SPLITS}
        _log(f"peer encoding from cache {folder}")
        return Encoded(splits=splits, meta=meta)
    t0 = time.perf_counter()
    enc = encode(Path(raw_dir), max_len=max_len, seed=seed)
    enc.meta["encode_seconds"] = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        np.savez(folder / f"{s}.npz", **enc.splits[s])
    tmp = folder / ".meta.json.tmp"
    tmp.write_text(json.dumps(enc.meta, indent=1))
    os.replace(tmp, folder / "meta.json")  # written last: marks the cache complete
    _log(f"peer encoding written to {folder} ({enc.meta['encode_seconds']:.1f} s)")
    return enc


def limit_train_rows(raw_dir: Path, work_dir: Path, max_rows: int) -> Path:
    """A raw folder with the first ``max_rows`` training samples and their common records.

    The test files are linked, not copied. Samples are grouped by record in the raw format, so
    the head of the skeleton file is a prefix of whole records (but the last one may be cut).
    """
    raw_dir = Path(raw_dir)
    key = _fingerprint(raw_dir, max_rows=max_rows)
    out = Path(work_dir) / f"raw_head_{max_rows}_{key}"
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfis: set[bytes] = set()
    skip = _has_header(raw_dir / RAW_FILES["train", "skeleton"])
    with (
        open(raw_dir / RAW_FILES["train", "skeleton"], "rb") as src,
        open(out / RAW_FILES["train", "skeleton"], "wb") as dst,
    ):
        if skip:
            src.readline()
        for i, line in enumerate(src):
            if i >= max_rows:
                break
            dst.write(line)
            cfis.add(line.split(b",", 4)[3])
    with (
        open(raw_dir / RAW_FILES["train", "common"], "rb") as src,
        open(out / RAW_FILES["train", "common"], "wb") as dst,
    ):
        for line in src:
            if line.split(b",", 1)[0] in cfis:
                dst.write(line)
    for split in ("test",):
        for kind in ("skeleton", "common"):
            link = out / RAW_FILES[split, kind]
            if not link.exists():
                link.symlink_to((raw_dir / RAW_FILES[split, kind]).resolve())
    done.write_text("")
    return out
