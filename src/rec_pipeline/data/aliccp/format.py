"""The Ali-CCP text format's constants: file kinds and names, field lists, separators.

The field lists themselves are the project configuration's (``rec_pipeline.config``); here they
are grouped by the role each field plays in the logs.
"""

from __future__ import annotations

from rec_pipeline.config import ALICCP_COMMON_FIELDS, ALICCP_SKELETON_FIELDS

SKELETON_KIND = "skeleton"
COMMON_KIND = "common"
# Number of header columns before feature_list, i.e. commas per valid line.
HEADER_COMMAS = {SKELETON_KIND: 5, COMMON_KIND: 2}

SPLITS = ("train", "test")
# Per split: (skeleton file, common-features file).
SPLIT_FILES = {
    split: (f"sample_skeleton_{split}.csv", f"common_features_{split}.csv") for split in SPLITS
}
RAW_FILE_NAMES = tuple(name for split in SPLITS for name in SPLIT_FILES[split])

# A feature list joins features with FEATURE_SEP; a feature is field ID_SEP id VALUE_SEP value.
FEATURE_SEP, ID_SEP, VALUE_SEP = "\x01", "\x02", "\x03"

SKELETON_FIELDS = tuple(ALICCP_SKELETON_FIELDS)
COMMON_FIELDS = tuple(ALICCP_COMMON_FIELDS)
ALL_FIELDS = COMMON_FIELDS + SKELETON_FIELDS
# Roles, in the order of the lists above.
USER_FIELD = COMMON_FIELDS[0]  # 101
PROFILE_FIELDS = COMMON_FIELDS[1:9]  # 121 ... 129, one categorical value each
BEHAVIOUR_FIELDS = COMMON_FIELDS[9:]  # 109_14 110_14 127_14 150_14: weighted multi-hot lists
ITEM_FIELDS = SKELETON_FIELDS[:5]  # 205 item, 206 category, 207 shop, 216 brand, 210 intention
CROSS_FIELDS = SKELETON_FIELDS[5:9]  # 508 509 702 853: behaviour list x item attribute
POSITION_FIELD = SKELETON_FIELDS[9]  # 301
