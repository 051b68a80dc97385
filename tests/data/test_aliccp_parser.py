"""Tests of the raw Ali-CCP parser against hand-written lines and a slow reference parser."""

from __future__ import annotations

import math
import pickle
import random
import re

import numpy as np
import pyarrow as pa
import pytest
from aliccp_reference import assert_matches_reference, run_parser

from rec_pipeline.data.aliccp import (
    COMMON_KIND,
    OTHER_FIELDS,
    SKELETON_KIND,
    FileParser,
    NoValidRowsError,
    ParseReport,
    iter_parsed_chunks,
    parse_file,
)
from rec_pipeline.data.aliccp import fields as aliccp_fields
from rec_pipeline.data.aliccp import parser as aliccp_parser

# Every test runs with each tokenizer (tests/data/conftest.py).
pytestmark = pytest.mark.usefixtures("each_tokenizer")
SK_FIELDS = ["205", "206", "216", "853"]
CM_FIELDS = ["101", "109_14", "121", "150_14"]


def feat(field: str, fid, value) -> str:
    return f"{field}\x02{fid}\x03{value}"


def sk_line(sid, click, conv, cfi, feats, num=None) -> str:
    num = len(feats) if num is None else num
    return f"{sid},{click},{conv},{cfi},{num}," + "\x01".join(feats)


def cm_line(cfi, feats, num=None) -> str:
    num = len(feats) if num is None else num
    return f"{cfi},{num}," + "\x01".join(feats)


def to_bytes(lines, end="\n", final_newline=True) -> bytes:
    data = end.join(lines) + (end if final_newline else "")
    return data.encode("latin-1")


def write(tmp_path, data: bytes, name="raw.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Well-formed lines


def test_skeleton_round_trip(tmp_path):
    lines = [
        sk_line(1, 1, 0, "bacff91692951881", [
            feat("205", 3_400_000_000, "1.0"),
            feat("853", 17, "0.693147"),
            feat("206", 5, "1.0"),
            feat("853", 18, "2.30259"),
            feat("853", 0, "-0.5"),
        ]),
        sk_line(2, 1, 1, "c0ffee", [feat("216", 99, "3")]),  # weights may be integers
        sk_line(3, 0, 0, "c0ffee", []),  # no feature at all
    ]  # fmt: skip
    path = write(tmp_path, to_bytes(lines))
    result = parse_file(path, SKELETON_KIND, SK_FIELDS)
    rows = []
    for r, _ in iter_parsed_chunks(path, SKELETON_KIND, SK_FIELDS):
        rows.extend(r.to_pylist())
    assert rows[0] == {
        "sample_id": 1,
        "click": 1,
        "conversion": 0,
        "common_feature_index": "bacff91692951881",
        "id_205": [3_400_000_000],
        "w_205": [1.0],
        "id_206": [5],
        "w_206": [1.0],
        "id_216": [],
        "w_216": [],
        "id_853": [17, 18, 0],
        "w_853": [float(np.float32(0.693147)), float(np.float32(2.30259)), -0.5],
    }
    assert rows[1]["id_216"] == [99] and rows[1]["w_216"] == [3.0]
    assert rows[1]["id_205"] == [] and rows[1]["conversion"] == 1
    assert all(rows[2][f"id_{f}"] == [] for f in SK_FIELDS)
    assert result.report.valid_rows == 3 and result.report.counts == {}
    assert result.report.features_kept == 6
    assert result.quarantine.num_rows == 0
    assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 1 << 20)


def test_schema_types(tmp_path):
    path = write(tmp_path, to_bytes([sk_line(7, 0, 0, "a", [feat("205", 1, "1.0")])]))
    rows, _ = next(iter_parsed_chunks(path, SKELETON_KIND, SK_FIELDS))
    assert rows.schema.field("sample_id").type == pa.int64()
    assert rows.schema.field("click").type == pa.int8()
    assert rows.schema.field("id_205").type == pa.list_(pa.int64())
    assert rows.schema.field("w_205").type == pa.list_(pa.float32())
    assert rows.column("id_206").null_count == 0


def test_common_round_trip(tmp_path):
    behaviour = [feat("109_14", 1000 + i, f"{math.log(2 + i):.6g}") for i in range(300)]
    lines = [
        cm_line("bacff91692951881", [feat("101", 42, "1.0"), *behaviour, feat("121", 7, "1.0")]),
        cm_line("deadbeef", [feat("150_14", 3, "1.38629"), feat("150_14", 2, "0.693147")]),
    ]
    path = write(tmp_path, to_bytes(lines))
    report, rows, _ = assert_matches_reference(path, COMMON_KIND, CM_FIELDS, 1 << 20)
    assert rows[0]["common_feature_index"] == "bacff91692951881"
    assert rows[0]["id_101"] == [42] and rows[0]["id_121"] == [7]
    assert rows[0]["id_109_14"] == list(range(1000, 1300))
    assert rows[0]["w_109_14"][:2] == [float(np.float32(0.693147)), float(np.float32(1.09861))]
    assert rows[0]["id_150_14"] == [] and rows[1]["id_109_14"] == []
    assert rows[1]["id_150_14"] == [3, 2]
    assert report.features_kept == 304


def test_value_formats(tmp_path):
    values = ["1.0", "0", "-0.5", "3", "1e-05", "2.5E+3", "+1.5", ".5", "5.", "-0", "-.25",
              "0.000001", "123456.789012", "12345678.9", "0.1234567890123456789",
              "1234567890123456", "99999999999999999999", "3.4e38"]  # fmt: skip
    lines = [sk_line(i, 0, 0, "c", [feat("205", 1, v)]) for i, v in enumerate(values)]
    path = write(tmp_path, to_bytes(lines))
    _, rows, quarantine = assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 1 << 20)
    got = [r["w_205"][0] for r in rows]
    assert got == [float(np.float32(float(v))) for v in values]
    assert math.copysign(1.0, got[9]) == -1.0  # "-0" keeps its sign
    assert quarantine == []


def test_integer_ids(tmp_path):
    ids = ["0", "7", "007", "3400000000", "12345678", "123456789", "9999999999999999",
           "12345678901234567", "9223372036854775807"]  # fmt: skip
    lines = [sk_line(int(i), 0, 0, "c", [feat("206", v, "1.0")]) for i, v in enumerate(ids)]
    path = write(tmp_path, to_bytes(lines))
    _, rows, _ = assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 1 << 20)
    assert [r["id_206"][0] for r in rows] == [int(v) for v in ids]


def test_decimal_parser_many_random_tokens(tmp_path):
    rng = random.Random(7)
    values = []
    for _ in range(4000):
        int_digits = rng.randint(0, 9)
        frac_digits = rng.randint(0, 9)
        text = "".join(rng.choice("0123456789") for _ in range(int_digits))
        if frac_digits or rng.random() < 0.5:
            text += "." + "".join(rng.choice("0123456789") for _ in range(frac_digits))
        if rng.random() < 0.3:
            text = "-" + text
        values.append(text or "0")
    feats = [feat("150_14", i, v) for i, v in enumerate(values)]
    lines = [cm_line(f"k{j}", feats[j * 100 : (j + 1) * 100]) for j in range(40)]
    path = write(tmp_path, to_bytes(lines))
    assert_matches_reference(path, COMMON_KIND, CM_FIELDS, 1 << 20)


# ---------------------------------------------------------------------------------------------
# Malformed lines, one reason at a time

GOOD = sk_line(1, 1, 0, "abc", [feat("205", 5, "1.0"), feat("206", 6, "0.5")])
BAD_LINES = {
    "wrong_column_count": [
        "1,1,0,abc,0",
        "1,1,0,abc,1,205\x025\x031.0,",
        "1,1,0,abc,2,205\x025\x031.0\x01206,6\x030.5",
        "just text",
        ",,,,,,,",
    ],
    "bad_number": [
        "1x,1,0,abc,1,205\x025\x031.0",
        ",1,0,abc,1,205\x025\x031.0",
        "-1,1,0,abc,1,205\x025\x031.0",
        "99999999999999999999,1,0,abc,1,205\x025\x031.0",
        "1,2,0,abc,1,205\x025\x031.0",
        "1,1,x,abc,1,205\x025\x031.0",
        "1,01,0,abc,1,205\x025\x031.0",
        "1,1,0,abc,one,205\x025\x031.0",
        "1,1,0,abc,1,205\x025a\x031.0",
        "1,1,0,abc,1,205\x02\x031.0",
        "1,1,0,abc,1,205\x02-5\x031.0",
        "1,1,0,abc,1,205\x029223372036854775808\x031.0",
        "1,1,0,abc,1,205\x025\x03abc",
        "1,1,0,abc,1,205\x025\x031.2.3",
        "1,1,0,abc,1,205\x025\x03",
        "1,1,0,abc,1,205\x025\x03nan",
        "1,1,0,abc,1,205\x025\x03inf",
        "1,1,0,abc,1,205\x025\x031e39",
        "1,1,0,abc,1,205\x025\x03-",
        "1,1,0,abc,1,205\x025\x031 ",
        "1,1,0,abc,1,205\x025\x031_0",
        "1\x01,1,0,abc,1,205\x025\x031.0",
    ],
    "bad_common_feature_index": ["1,1,0,,1,205\x025\x031.0", "1,1,0,a\x02b,1,205\x025\x031.0"],
    "bad_feature_list": [
        "1,1,0,abc,1,2055\x031.0",  # \x02 missing
        "1,1,0,abc,1,205\x0251.0",  # \x03 missing
        "1,1,0,abc,2,205\x025\x031.0\x01\x01206\x026\x030.5",  # doubled \x01
        "1,1,0,abc,1,205\x025\x031.0\x01",  # trailing \x01
        "1,1,0,abc,1,\x01205\x025\x031.0",  # leading \x01
        "1,1,0,abc,1,205\x02\x025\x031.0",  # doubled \x02
        "1,1,0,abc,1,205\x025\x03\x031.0",  # doubled \x03
        "1,1,0,abc,1,205\x035\x021.0",  # swapped
        "1,1,0,abc,1,\x025\x031.0",  # empty field token
        "1,1,0,abc,0,junk",  # text but no feature
    ],
    "garbage_bytes": [
        "1,1,0,abc,1,205\x025\x031.0\x00",
        "1,1,0,a\xffc,1,205\x025\x031.0",
        "1,1,0,abc,1,205\x025\x031.0\t",
        "1,1,0,abc\r,1,205\x025\x031.0",
        "\x00\x00\x00\x00",
        "".join(chr(c) for c in random.Random(3).choices(range(256), k=300)).replace("\n", ""),
    ],
    "feature_num_mismatch": [
        "1,1,0,abc,2,205\x025\x031.0",
        "1,1,0,abc,0,205\x025\x031.0",
        "1,1,0,abc,1,",
        "1,1,0,abc,00000000000000000001,205\x025\x031.0\x01206\x026\x030.5",
    ],
    "click0_conversion1": ["1,0,1,abc,1,205\x025\x031.0"],
    "empty_line": [""],
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_each_rejection_reason(tmp_path, reason):
    bad = BAD_LINES[reason]
    lines = [GOOD]
    for line in bad:
        lines += [line, GOOD]
    path = write(tmp_path, to_bytes(lines))
    result = parse_file(path, SKELETON_KIND, SK_FIELDS)
    assert result.report.counts == {reason: len(bad)}
    assert result.report.valid_rows == len(bad) + 1
    assert result.report.lines == 2 * len(bad) + 1
    assert result.quarantine.column("reason").to_pylist() == [reason] * len(bad)
    # quarantined lines are the even line numbers, the raw text decoded with replacement
    assert result.quarantine.column("line_number").to_pylist() == [2 * (i + 1) for i in range(len(bad))]  # fmt: skip
    expected = [line.encode("latin-1").decode("utf-8", errors="replace") for line in bad]
    assert result.quarantine.column("line").to_pylist() == expected
    assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 1 << 20)
    assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 64)


def test_common_rejections(tmp_path):
    lines = [
        cm_line("k1", [feat("101", 1, "1.0")]),
        "k2,1,101\x021\x031.0,",  # wrong column count
        "k3,x,101\x021\x031.0",  # bad feature_num
        ",1,101\x021\x031.0",  # empty common_feature_index
        cm_line("k4", [feat("101", 1, "1.0")], num=3),
        "k5,1,1011\x031.0",
        "k5b,0,",
        cm_line("k6", [feat("101", 1, "1.0\x7f")]),
    ]
    path = write(tmp_path, to_bytes(lines))
    report, rows, quarantine = assert_matches_reference(path, COMMON_KIND, CM_FIELDS, 1 << 20)
    assert [r["common_feature_index"] for r in rows] == ["k1", "k5b"]
    assert [q["reason"] for q in quarantine] == [
        "wrong_column_count",
        "bad_number",
        "bad_common_feature_index",
        "feature_num_mismatch",
        "bad_feature_list",
        "garbage_bytes",
    ]


def test_unknown_fields_are_counted_and_ignored(tmp_path):
    lines = [
        sk_line(
            1, 0, 0, "a", [feat("205", 1, "1.0"), feat("999", 2, "1.0"), feat("301", 3, "1.0")]
        ),
        sk_line(2, 0, 0, "a", [feat("999", 4, "1.0"), feat("a_very_long_field_token", 5, "1")]),
        sk_line(3, 0, 0, "a", [feat("12345678", 6, "1.0"), feat("123456789", 7, "1.0")]),
    ]
    path = write(tmp_path, to_bytes(lines))
    report, rows, _ = assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 1 << 20)
    assert report.unknown_fields == {
        "999": 2,
        "301": 1,
        "a_very_long_field_token": 1,
        "12345678": 1,
        "123456789": 1,
    }
    assert report.valid_rows == 3 and report.features_kept == 1
    assert rows[0]["id_205"] == [1]


def test_long_configured_field_names(tmp_path):
    fields = ["a_very_long_field", "205", "123456789"]
    lines = [
        sk_line(1, 0, 0, "a", [feat("a_very_long_field", 1, "1.0"), feat("205", 2, "0.5")]),
        sk_line(2, 0, 0, "a", [feat("123456789", 3, "1.0"), feat("23456789", 4, "1.0")]),
    ]
    path = write(tmp_path, to_bytes(lines))
    report, rows, _ = assert_matches_reference(path, SKELETON_KIND, fields, 1 << 20)
    assert rows[0]["id_a_very_long_field"] == [1] and rows[1]["id_123456789"] == [3]
    assert report.unknown_fields == {"23456789": 1}


def test_truncated_last_line(tmp_path):
    full = to_bytes([GOOD, GOOD, GOOD])
    still_valid = []
    for cut in range(len(GOOD) * 2 + 3, len(full)):
        path = write(tmp_path, full[:cut])
        report, rows, quarantine = assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 64)
        assert report.lines == 3 and report.valid_rows >= 2
        if report.valid_rows == 3:
            still_valid.append(full[:cut].rsplit(b"\x03", 1)[1])
    assert still_valid == [b"0", b"0.", b"0.5"]  # cut inside the last value "0.5"
    # e.g. cut inside the last value: the line still parses, but feature_num disagrees
    path = write(tmp_path, to_bytes([GOOD, GOOD + "\x01216\x027"], final_newline=False))
    result = parse_file(path, SKELETON_KIND, SK_FIELDS)
    assert result.report.counts == {"bad_feature_list": 1}
    assert result.quarantine.column("line_number").to_pylist() == [2]


def test_crlf_line_ends(tmp_path):
    lines = [GOOD, BAD_LINES["bad_number"][0], "", GOOD]
    lf = write(tmp_path, to_bytes(lines), "lf.csv")
    crlf = write(tmp_path, to_bytes(lines, end="\r\n"), "crlf.csv")
    crlf_open = write(tmp_path, to_bytes(lines, end="\r\n", final_newline=False), "open.csv")
    out = [run_parser(p, SKELETON_KIND, SK_FIELDS, 1 << 20) for p in (lf, crlf, crlf_open)]
    for _, rows, quarantine in out[1:]:
        assert rows == out[0][1]
        assert [(q["line_number"], q["reason"], q["line"]) for q in quarantine] == [
            (q["line_number"], q["reason"], q["line"]) for q in out[0][2]
        ]
    for path in (crlf, crlf_open):
        for chunk in (16, 1 << 20):
            assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, chunk)


def test_empty_and_all_bad_files_raise(tmp_path):
    empty = write(tmp_path, b"", "sample_skeleton_empty.csv")
    with pytest.raises(NoValidRowsError, match="sample_skeleton_empty.csv"):
        parse_file(empty, SKELETON_KIND, SK_FIELDS)
    bad = write(tmp_path, to_bytes(["x", "", "1,0,1,a,0,"]), "sample_skeleton_bad.csv")
    with pytest.raises(NoValidRowsError, match="sample_skeleton_bad.csv") as info:
        parse_file(bad, SKELETON_KIND, SK_FIELDS)
    assert isinstance(info.value, ValueError)
    assert "3 lines, all rejected" in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    assert info.value.report.counts == {
        "wrong_column_count": 1,
        "empty_line": 1,
        "click0_conversion1": 1,
    }
    # driving the chunks directly does not raise; the report can be checked afterwards
    parser = FileParser(bad, SKELETON_KIND, SK_FIELDS)
    assert sum(r.num_rows for r, _ in parser.chunks()) == 0
    with pytest.raises(NoValidRowsError):
        parser.report.raise_if_no_rows()
    assert list(iter_parsed_chunks(empty, SKELETON_KIND, SK_FIELDS)) == []


def test_chunk_boundaries_and_long_lines(tmp_path):
    long_line = sk_line(9, 1, 1, "z" * 50, [feat("853", i, "0.693147") for i in range(400)])
    lines = [GOOD, long_line, BAD_LINES["bad_feature_list"][0], GOOD, long_line, "", GOOD]
    path = write(tmp_path, to_bytes(lines, final_newline=False))
    results = [run_parser(path, SKELETON_KIND, SK_FIELDS, c) for c in (1, 7, 64, 1000, 1 << 20)]
    for report, rows, quarantine in results[1:]:
        assert rows == results[0][1] and quarantine == results[0][2]
        assert report == results[0][0]
    assert len(long_line) > 6000
    report, rows, quarantine = results[0]
    assert rows[1]["id_853"] == list(range(400))
    assert [q["line_number"] for q in quarantine] == [3, 6]
    # iterating in small chunks yields several chunks, each with its own rows
    assert len(list(iter_parsed_chunks(path, SKELETON_KIND, SK_FIELDS, chunk_bytes=64))) > 3


def test_slices_inside_a_chunk(tmp_path, monkeypatch):
    # A chunk is parsed in ~1 MB slices; make them tiny so that every chunk has many.
    rng = random.Random(11)
    data = random_file(rng, SKELETON_KIND, SK_FIELDS, 400)
    data += b"1,0,0,a,1,205\x025\x031.0\r\n" + random_file(rng, SKELETON_KIND, SK_FIELDS, 100)
    path = write(tmp_path, data)
    expected = run_parser(path, SKELETON_KIND, SK_FIELDS, 1 << 20)
    monkeypatch.setattr(aliccp_parser, "_SLICE_BYTES", 300)
    for chunk in (64, 5000, 1 << 20):
        report, rows, quarantine = assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, chunk)
        assert (report, rows, quarantine) == expected
    rows, _ = next(iter_parsed_chunks(path, SKELETON_KIND, SK_FIELDS, chunk_bytes=1 << 20))
    assert rows.column("id_205").num_chunks > 10  # one record batch per slice


def test_unknown_field_names_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(aliccp_fields, "_MAX_UNKNOWN_FIELDS", 2)
    tokens = ["901", "902", "903", "904", "a_long_unknown_token", "901"]
    lines = [sk_line(i, 0, 0, "a", [feat(t, 1, "1.0"), feat("205", i, "1")]) for i, t in enumerate(tokens)]  # fmt: skip
    path = write(tmp_path, to_bytes(lines))
    for chunk in (40, 1 << 20):
        result = parse_file(path, SKELETON_KIND, SK_FIELDS, chunk_bytes=chunk)
        assert result.report.unknown_fields == {"901": 2, "902": 1, OTHER_FIELDS: 3}
        assert result.report.valid_rows == 6 and result.report.features_kept == 6


def test_quarantine_line_is_truncated(tmp_path):
    line = "1,1,0,abc,1," + "9" * 5000
    wide = "1,1,0,abc,1," + "\u20ac" * 3000  # 3-byte UTF-8 characters
    path = write(tmp_path, f"{GOOD}\n{line}\n{wide}\n".encode())
    result = parse_file(path, SKELETON_KIND, SK_FIELDS)
    assert result.quarantine.column("line").to_pylist() == [line[:2000], wide[:2000]]
    assert result.quarantine.column("reason").to_pylist() == ["bad_feature_list", "garbage_bytes"]


def test_parse_file_on_chunk_and_quarantine_cap(tmp_path):
    lines = [GOOD if i % 3 else "bad" for i in range(300)]
    path = write(tmp_path, to_bytes(lines))
    seen = []
    result = parse_file(
        path,
        SKELETON_KIND,
        SK_FIELDS,
        chunk_bytes=256,
        on_chunk=lambda r, q: seen.append((r.num_rows, q.num_rows)),
        max_quarantine_rows=25,
    )
    assert len(seen) > 1 and sum(r for r, _ in seen) == 200 and sum(q for _, q in seen) == 100
    assert result.report.counts == {"wrong_column_count": 100}
    assert result.quarantine.num_rows == 25
    assert result.quarantine.column("line_number").to_pylist()[:3] == [1, 4, 7]


def test_report_merge():
    a = ParseReport("f", SKELETON_KIND, lines=3, valid_rows=2, counts={"x": 1},
                    unknown_fields={"9": 2}, features_kept=5, bytes_read=10)  # fmt: skip
    b = ParseReport("f", SKELETON_KIND, lines=2, valid_rows=1, counts={"x": 1, "y": 0},
                    unknown_fields={"8": 1}, features_kept=1, bytes_read=4)  # fmt: skip
    merged = a.merge(b)
    assert merged.lines == 5 and merged.valid_rows == 3 and merged.features_kept == 6
    assert merged.counts == {"x": 2, "y": 0} and merged.unknown_fields == {"9": 2, "8": 1}
    assert a.counts == {"x": 1}  # merge does not mutate
    assert merged.to_dict()["rejected"] == 2


def test_invalid_arguments(tmp_path):
    path = write(tmp_path, to_bytes([GOOD]))
    with pytest.raises(ValueError, match="kind"):
        FileParser(path, "other", SK_FIELDS)
    with pytest.raises(ValueError, match="duplicate"):
        FileParser(path, SKELETON_KIND, ["205", "205"])
    with pytest.raises(TypeError):
        FileParser(path, SKELETON_KIND, "205")


# ---------------------------------------------------------------------------------------------
# Randomised comparison with the reference


def random_value(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return rng.choice(["1.0", "0.693147", "1.09861", "2.30259", "0", "1"])
    if r < 0.6:
        return f"{rng.uniform(-50, 5000):.{rng.randint(0, 8)}f}"
    if r < 0.7:
        return f"{rng.uniform(0, 1):.{rng.randint(9, 18)}f}"  # > 15 digits: the slow path
    if r < 0.8:
        return rng.choice([f"{rng.uniform(0, 1):e}", "+2.5", ".5", "5.", "-.5", "-0"])
    if r < 0.9:
        return f"{rng.uniform(1, 1e6):.6g}"
    return str(rng.randint(0, 10 ** rng.randint(1, 16)))


def random_id(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.7:
        return str(rng.randint(0, 3_400_000_000))
    if r < 0.8:
        return str(rng.randint(0, 99))
    if r < 0.9:
        return "0" * rng.randint(1, 3) + str(rng.randint(0, 999))
    return str(rng.randint(0, 2**63 - 1))


def random_features(rng: random.Random, fields, n) -> list[str]:
    pool = [*fields, "999", "77_1", "long_unknown_field"]
    return [feat(rng.choice(pool), random_id(rng), random_value(rng)) for _ in range(n)]


def corrupt(rng: random.Random, line: str) -> str:
    kind = rng.randrange(14)
    pos = rng.randrange(len(line) + 1)
    seps = [i for i, ch in enumerate(line) if ch in "\x01\x02\x03,"]
    if kind == 0:
        return line[:pos] + rng.choice("\x00\xff\t\x1b\x7f\r") + line[pos:]
    if kind == 1 and seps:
        i = rng.choice(seps)
        return line[:i] + line[i + 1 :]  # drop a separator
    if kind == 2 and seps:
        i = rng.choice(seps)
        return line[:i] + line[i] + line[i:]  # double a separator
    if kind == 3:
        return line[:pos] + rng.choice("\x01\x02\x03,") + line[pos:]
    if kind == 4:
        return line[:pos]  # truncated
    if kind == 5:
        return line + "\x01"
    if kind == 6:
        return ""
    if kind == 7:
        return "".join(chr(rng.randrange(256)) for _ in range(rng.randint(1, 80))).replace("\n", "")
    if kind == 8:
        return line[:pos] + rng.choice("x.-+e 9") + line[pos:]
    if kind == 9:  # value -> garbage number
        return re.sub("\x03[^\x01]*", "\x03" + rng.choice(["1.2.3", "nan", "1e99", "", "--1"]), line, count=1)  # fmt: skip
    return line


def random_file(rng: random.Random, kind, fields, n_lines) -> bytes:
    out = []
    for i in range(n_lines):
        n_feat = rng.choice([0, 1, 3, 13, 40])
        feats = random_features(rng, fields, n_feat)
        num = n_feat if rng.random() < 0.97 else n_feat + rng.choice([-1, 1])
        if kind == SKELETON_KIND:
            click = rng.choice("0011")
            conv = rng.choice("0001") if rng.random() < 0.95 else rng.choice(["2", "", "01"])
            sid = str(i) if rng.random() < 0.97 else rng.choice(["", "x", "-1", str(2**63)])
            line = sk_line(sid, click, conv, f"{rng.getrandbits(64):016x}", feats, num)
        else:
            line = cm_line(f"{rng.getrandbits(64):x}", feats, num)
        if rng.random() < 0.15:
            line = corrupt(rng, line)
        out.append(line + ("\r\n" if rng.random() < 0.05 else "\n"))
    data = "".join(out)
    if rng.random() < 0.5:
        data = data[:-1]
    return data.encode("latin-1")


@pytest.mark.parametrize("kind", [SKELETON_KIND, COMMON_KIND])
def test_random_lines_match_reference(tmp_path, kind):
    rng = random.Random(20240611 if kind == SKELETON_KIND else 4242)
    fields = SK_FIELDS if kind == SKELETON_KIND else CM_FIELDS
    big = write(tmp_path, random_file(rng, kind, fields, 3000), "big.csv")
    report, _, _ = assert_matches_reference(big, kind, fields, 1 << 20)
    assert report.valid_rows > 2000 and len(report.counts) >= 6
    assert_matches_reference(big, kind, fields, 8192)
    small = write(tmp_path, random_file(rng, kind, fields, 200), "small.csv")
    assert_matches_reference(small, kind, fields, 64)


def test_random_lines_in_many_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(aliccp_parser, "_SLICE_BYTES", 2000)
    for kind, fields, seed in ((SKELETON_KIND, SK_FIELDS, 5), (COMMON_KIND, CM_FIELDS, 6)):
        path = write(tmp_path, random_file(random.Random(seed), kind, fields, 1000), f"{kind}.csv")
        assert_matches_reference(path, kind, fields, 1 << 20)
        assert_matches_reference(path, kind, fields, 10_000)
