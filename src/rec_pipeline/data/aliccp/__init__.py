"""Raw Ali-CCP text files: their format, a fast bounded-memory parser, and a writer.

Format
------
``sample_skeleton_*.csv``: ``sample_id,click,conversion,common_feature_index,feature_num,feature_list``
``common_features_*.csv``: ``common_feature_index,feature_num,feature_list``

``feature_list`` is features joined by ``\\x01``; a feature is ``field\\x02feature_id\\x03value``.
Lines end in ``\\n`` (``\\r\\n`` is accepted); the last line may lack its newline.

Modules
-------
:mod:`.format` constants (kinds, file names, field lists), :mod:`.schema` output schemas,
:mod:`.report` counts and errors, :mod:`.parser` the file parser, built on :mod:`.scan`
(structure), :mod:`.numbers` (number kernels), :mod:`.fields` (field lookup) and
:mod:`.reference` (per-line reasons); :mod:`.parts` runs it in worker processes that write
Parquet part files; :mod:`.writer` builds lines.

API
---
* :class:`FileParser` ``(path, kind, fields, chunk_bytes)``: ``.chunks()`` yields one
  ``(rows, quarantine)`` pair of :class:`pyarrow.Table` per chunk of the file and keeps
  ``.report`` (a :class:`ParseReport`) up to date as the chunks are consumed.
* :func:`write_parts` ``(parsers, staging, workers)`` does the same for several files in worker
  processes, each writing a chunk's rows to a Parquet part file: it yields ``(parser index,
  PartFile, quarantine)`` (:mod:`.parts`).
* :func:`iter_parsed_chunks` is the same as a plain generator; pass ``report=ParseReport(...)``
  (or any report) to have each chunk's counts added into it.
* :func:`parse_file` drives the chunks (calling ``on_chunk(rows, quarantine)`` for each), and
  returns ``ParseResult(report, quarantine)``; it raises :class:`NoValidRowsError` when the file
  is empty or holds no valid row. ``report.raise_if_no_rows()`` does the same check for callers
  that drive :func:`iter_parsed_chunks` themselves.

``rows`` columns (schema: :func:`rows_schema`): skeleton ``sample_id`` int64, ``click`` int8,
``conversion`` int8, ``common_feature_index`` string; common ``common_feature_index`` string;
then for each configured field ``f`` in order ``id_{f}`` list<int64> and ``w_{f}`` list<float32>
(the features of that field in file order; an absent field is an empty list, never null).
``quarantine`` columns (:data:`QUARANTINE_SCHEMA`): ``file``, ``line_number`` (1-based),
``reason``, ``line`` (raw text, undecodable bytes replaced, cut to 2000 characters).

Validation
----------
A line is rejected whole, counted under the first reason that applies, in this order:

1. ``empty_line``: nothing between two newlines.
2. ``garbage_bytes``: a byte outside printable ASCII (0x20-0x7E) other than the separators
   ``\\x01 \\x02 \\x03`` (NUL, tab, a stray ``\\r``, bytes >= 0x7F...).
3. ``wrong_column_count``: not exactly 6 (skeleton) / 3 (common) comma-separated columns.
4. ``bad_number``: ``sample_id`` or ``feature_num`` not a plain non-negative int64 (ASCII digits
   only), or ``click`` / ``conversion`` not exactly ``0`` / ``1``;
   ``bad_common_feature_index``: empty, or holding a separator byte.
   (Header columns are checked left to right; the first failing one names the reason.)
5. ``bad_feature_list``: the list is not ``T\\x02T\\x03T`` joined by ``\\x01`` (a missing,
   doubled or trailing separator, ...) or a field token is empty. An empty list is allowed.
6. ``bad_number``: a feature id that is not a plain non-negative int64, or a value that is not
   a finite float32 decimal ``[+-]?(d+[.d*]|.d+)([eE][+-]?d+)?``.
7. ``feature_num_mismatch``: ``feature_num`` differs from the number of features.
8. ``click0_conversion1`` (skeleton only): a conversion without a click.

Every rejected line is also a quarantine row; ``lines == valid_rows + sum(counts.values())``.
Features of a field that is not in ``fields`` are ignored and counted per field token in
``unknown_fields`` (the line stays valid; past 4096 distinct unknown tokens, further ones are
counted together under ``"(other)"``). Blank lines count as lines (``empty_line``).

How it is fast
--------------
The file is read in chunks of ``chunk_bytes`` into one reused buffer, cut after the last
newline (the rest is carried over; the buffer grows while a single line is longer than a
chunk). Each chunk is parsed in ~1 MB slices cut at line ends, so that the temporaries stay in
the CPU caches; the chunk's tables hold one record batch per slice (``combine_chunks()`` gives
contiguous arrays). A slice is scanned once with numpy for the structural bytes
(``, \\x01 \\x02 \\x03 \\n`` and anything invalid); line structure is checked from the sequence
of separator classes (allowed transitions plus a comma count per line), and every token is
located by the separators around it, so no Python code runs per line or per feature. Numbers
are read eight bytes at a time: the 8 (or 16) bytes ending at a token's last byte are gathered
as one little-endian uint64, XOR ``'0'``, the bytes before the token are shifted out, and the
digits are validated and combined with SWAR arithmetic; a decimal point is found the same way
and squeezed out, so ``value = mantissa / 10**fraction_digits`` (correctly rounded: identical to
``float(text)``). Field tokens are packed into uint64 keys and looked up in a tiny perfect hash.
Rejected lines are re-examined one by one in Python, only to name the reason; odd but valid
tokens (exponents, ``+`` signs, more than 15 significant digits) also go through Python.
Measured on one core (benchmarks/README.md): ~200-270 MB/s on skeleton files, ~300-350 MB/s on
common-feature files; peak memory is the chunk buffer plus a few times ``chunk_bytes`` of output
and temporaries (about +75 MB over the interpreter at the 16 MB default), flat in the file size.
"""

from rec_pipeline.data.aliccp.fields import OTHER_FIELDS
from rec_pipeline.data.aliccp.format import (
    ALL_FIELDS,
    BEHAVIOUR_FIELDS,
    COMMON_FIELDS,
    COMMON_KIND,
    CROSS_FIELDS,
    ITEM_FIELDS,
    POSITION_FIELD,
    PROFILE_FIELDS,
    RAW_FILE_NAMES,
    SKELETON_FIELDS,
    SKELETON_KIND,
    SPLIT_FILES,
    SPLITS,
    USER_FIELD,
)
from rec_pipeline.data.aliccp.parser import (
    DEFAULT_CHUNK_BYTES,
    QUARANTINE_LINE_CHARS,
    FileParser,
    iter_parsed_chunks,
    parse_file,
)
from rec_pipeline.data.aliccp.parts import write_parts
from rec_pipeline.data.aliccp.report import NoValidRowsError, ParseReport, ParseResult
from rec_pipeline.data.aliccp.schema import QUARANTINE_SCHEMA, rows_schema

__all__ = [
    "ALL_FIELDS",
    "BEHAVIOUR_FIELDS",
    "COMMON_FIELDS",
    "COMMON_KIND",
    "CROSS_FIELDS",
    "DEFAULT_CHUNK_BYTES",
    "ITEM_FIELDS",
    "OTHER_FIELDS",
    "POSITION_FIELD",
    "PROFILE_FIELDS",
    "QUARANTINE_LINE_CHARS",
    "QUARANTINE_SCHEMA",
    "RAW_FILE_NAMES",
    "SKELETON_FIELDS",
    "SKELETON_KIND",
    "SPLITS",
    "SPLIT_FILES",
    "USER_FIELD",
    "FileParser",
    "NoValidRowsError",
    "ParseReport",
    "ParseResult",
    "iter_parsed_chunks",
    "parse_file",
    "rows_schema",
    "write_parts",
]
