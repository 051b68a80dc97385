"""Field token -> column slot lookup (a tiny perfect hash), with unknown tokens counted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rec_pipeline.data.aliccp.numbers import _EIGHT, _SIXTY_FOUR, _THREE, _U64

# Distinct unknown field tokens tracked by name; any further ones are counted as "(other)".
_MAX_UNKNOWN_FIELDS = 4096
OTHER_FIELDS = "(other)"


class FieldTable:
    """Field token -> slot: 0..len(fields)-1 for configured fields, then unknown tokens.

    Tokens of up to 8 bytes are looked up as uint64 keys (the token's bytes in the top bytes,
    zeros below) in a perfect hash ``(key * mult) >> shift`` over the keys seen so far; longer
    tokens (rare) go through a dict.
    """

    def __init__(self, fields: Sequence[str]):
        self.names: list[str] = list(fields)
        self.n_configured = len(self.names)
        self.slot_of: dict[bytes, int] = {f.encode(): i for i, f in enumerate(self.names)}
        self.other_slot: int | None = None
        self._rebuild()

    @staticmethod
    def key_of(token: bytes) -> int:
        return int.from_bytes(token.rjust(8, b"\0"), "little")

    def _rebuild(self) -> None:
        short = [(self.key_of(t), s) for t, s in self.slot_of.items() if len(t) <= 8]
        keys = np.array([k for k, _ in short], dtype=np.uint64)
        slots = np.array([s for _, s in short], dtype=np.int32)
        bits = max(4, (4 * len(keys)).bit_length())
        rng = np.random.default_rng(0x5EED)
        while True:
            for _ in range(100):
                mult = _U64(int(rng.integers(1, 2**62)) * 2 + 1)
                h = (keys * mult) >> _U64(64 - bits)
                if np.unique(h).size == keys.size:
                    break
            else:
                bits += 1
                continue
            break
        # Entry -1 of keys/slots is a sentinel: key 0 never occurs (a token has a non-NUL byte).
        self.keys = np.append(keys, _U64(0))
        self.slots = np.append(slots, np.int32(-1))
        self.table = np.full(1 << bits, keys.size, dtype=np.int32)
        self.table[h] = np.arange(keys.size, dtype=np.int32)
        self.mult, self.shift = mult, _U64(64 - bits)

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        j = np.take(self.table, (keys * self.mult) >> self.shift)
        slot = np.take(self.slots, j)
        hit = np.take(self.keys, j) == keys
        if not hit.all():
            slot[~hit] = -1
        return slot

    def _register(self, token: bytes) -> int:
        """Slot of a new unknown token: its own while fewer than the cap, else "(other)"."""
        if len(self.slot_of) - self.n_configured < _MAX_UNKNOWN_FIELDS:
            self.slot_of[token] = len(self.names)
            self.names.append(token.decode("ascii"))
            return self.slot_of[token]
        if self.other_slot is None:
            self.other_slot = len(self.names)
            self.names.append(OTHER_FIELDS)
        return self.other_slot

    def slots_for(
        self, u64: np.ndarray, off: int, b: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """Slot per field token [start, end) (tokens are non-empty and ASCII). [n_tokens]."""
        n = (end - start).view(np.uint64)
        keys = u64[end + off]  # (not np.take: it would copy the strided view)
        drop = _SIXTY_FOUR - (np.minimum(n, _EIGHT) << _THREE)
        keys >>= drop
        keys <<= drop
        slot = self._lookup(keys)
        long_tokens = n > _EIGHT
        missing = np.flatnonzero((slot < 0) & ~long_tokens)
        if missing.size:
            slot[missing] = self.resolve(keys[missing])
        for i in np.flatnonzero(long_tokens).tolist():
            token = b[start[i] : end[i]].tobytes()
            s = self.slot_of.get(token)
            slot[i] = self._register(token) if s is None else s
        return slot

    def resolve(self, keys: np.ndarray) -> np.ndarray:
        """Slots of short tokens' keys (see the class) that the table does not hold yet: each
        new token is registered, in key order. [n_keys] int32."""
        n_known_tokens = len(self.slot_of)
        for key in np.unique(keys).tolist():
            self._register(int(key).to_bytes(8, "little").lstrip(b"\0"))
        if len(self.slot_of) > n_known_tokens:
            self._rebuild()
        found = self._lookup(keys)
        if self.other_slot is not None:
            found[found < 0] = self.other_slot
        return found
