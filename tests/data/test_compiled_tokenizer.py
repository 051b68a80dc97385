"""The compiled tokenizer reads the lines of its grammar itself and hands a slice back to the
vectorised one only when a valid line is outside that grammar (the rows are the same either way:
every parser test runs with both, tests/data/conftest.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from aliccp_reference import assert_matches_reference
from test_aliccp_parser import BAD_LINES, GOOD, SK_FIELDS, feat, sk_line, to_bytes, write

from rec_pipeline.data.aliccp import SKELETON_KIND, FileParser
from rec_pipeline.data.aliccp import parser as aliccp_parser


@pytest.fixture()
def handed_back(monkeypatch):
    """The number of slices the vectorised tokenizer parsed."""
    calls = []
    vectorised = aliccp_parser.FileParser._parse_lines

    def counted(self, *args):
        calls.append(1)
        return vectorised(self, *args)

    monkeypatch.setattr(aliccp_parser.FileParser, "_parse_lines", counted)
    return calls


def _parse(path, tokenizer):
    parser = FileParser(path, SKELETON_KIND, SK_FIELDS, tokenizer=tokenizer)
    chunks = list(parser.chunks())
    rows = pa.concat_tables([r for r, _ in chunks])
    quarantine = pa.concat_tables([q for _, q in chunks])
    return rows, quarantine, parser.report.to_dict()


def test_valid_and_invalid_lines_stay_compiled(tmp_path, handed_back):
    invalid = [line for lines in BAD_LINES.values() for line in lines]
    values = ["1.0", "0.693147", "-2.5", ".5", "7.", "12345678.9", "-0.000001", "0"]
    valid = [
        sk_line(i, 1, i % 2, f"c{i}", [feat("205", 10**i, v), feat("999", i, "1")])
        for i, v in enumerate(values)
    ]
    path = write(tmp_path, to_bytes([GOOD, *invalid, *valid, ""]))
    report, rows, quarantine = assert_matches_reference(path, SKELETON_KIND, SK_FIELDS, 1 << 20)
    assert handed_back == []
    assert report.valid_rows == 1 + len(valid) and report.rejected == len(invalid) + 1
    assert report.unknown_fields == {"999": len(valid)}


@pytest.mark.parametrize(
    "odd",
    [
        feat("205", 5, "1e-3"),  # an exponent
        feat("205", 5, "+1.5"),  # a plus sign
        feat("205", 5, "-0.00000000000001"),  # 17 bytes
        feat("205", 5, "1234567890123456"),  # 16 digits
        feat("not_a_short_name", 5, "1.0"),  # a field token over 8 bytes
    ],
)
def test_a_valid_line_outside_the_grammar_hands_its_slice_back(tmp_path, handed_back, odd):
    path = write(tmp_path, to_bytes([GOOD, sk_line(2, 1, 0, "abc", [odd]), GOOD]))
    compiled = _parse(path, "compiled")
    assert handed_back == [1]
    assert compiled == _parse(path, "numpy")
    assert compiled[2]["valid_rows"] == 3


def test_crlf_line_ends_hand_the_slice_back(tmp_path, handed_back):
    path = write(tmp_path, to_bytes([GOOD, GOOD], end="\r\n"))
    compiled = _parse(path, "compiled")
    assert handed_back == [1] and compiled[2]["valid_rows"] == 2
    assert compiled == _parse(path, "numpy")


def test_unknown_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        FileParser(write(tmp_path, to_bytes([GOOD])), SKELETON_KIND, SK_FIELDS, tokenizer="rust")
