"""BLAKE3 in pure Python: the twin of the `blake3` package for ENGINE_NO_EXTENSIONS=1.

Default hash mode only (no key, no key derivation), 32-byte digest, streaming
input.  Written from the BLAKE3 specification: 1024-byte chunks of 64-byte
blocks, each block compressed with 7 rounds of the G mixing function, chunk
chaining values merged pairwise into a binary tree through a stack.

Plain Python pays ~30 ns of interpreter overhead per integer operation, and a
compression is ~1800 of them.  So this twin hashes many chunks at once, SIMD
style: each state word is one Python integer holding the same word of N
independent chunks in 64-bit lanes (32 value bits, 32 guard bits that absorb
carries and rotation spill and are masked off).  One big-integer operation
then does the work of N, and the tree above those chunks is reduced the same
way, level by level.  The lone chunk still open at the end, and the parents
merged on the stack, use the same code with a single lane.
"""
from __future__ import annotations

from struct import Struct

__all__ = ["Blake3", "new_hasher", "DIGEST_SIZE"]

DIGEST_SIZE = 32
BLOCK_LEN = 64
CHUNK_LEN = 1024
BLOCKS_PER_CHUNK = CHUNK_LEN // BLOCK_LEN

CHUNK_START = 1 << 0
CHUNK_END = 1 << 1
PARENT = 1 << 2
ROOT = 1 << 3

IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
      0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
MSG_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)

# Chunks hashed side by side.  Throughput grows with width (about 1.5 MB/s for
# one lane, 26 at 64, 28 at 128, 34 at 256) while the buffered input grows
# with it too; 128 keeps a hasher's pending input near 128 KiB.
MAX_LANES = 128

_WORDS = Struct("<16I")
_LANE_BITS = 64


def _compress_source() -> str:
    """Source of the compression function, fully unrolled.

    Unrolled because loops, indexing and G calls would cost more than the
    arithmetic itself.  Rather than permuting the message between rounds, each
    round reads the message words in the permuted order directly.  `L` masks
    the 32 value bits of every lane.
    """
    words = ", ".join(f"m{i}" for i in range(16))
    lines = [
        "def compress(cv, m, t0, t1, block_len, flags, L, iv0, iv1, iv2, iv3):",
        "    v0, v1, v2, v3, v4, v5, v6, v7 = cv",
        f"    {words} = m",
        "    v8 = iv0; v9 = iv1; v10 = iv2; v11 = iv3",
        "    v12 = t0; v13 = t1; v14 = block_len; v15 = flags",
    ]
    # Columns, then diagonals, of the 4x4 state.
    quarter_rounds = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                      (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))
    schedule = list(range(16))
    for _ in range(7):
        for i, (a, b, c, d) in enumerate(quarter_rounds):
            x, y = schedule[2 * i], schedule[2 * i + 1]
            for m, r1, r2 in ((x, 16, 12), (y, 8, 7)):
                lines += [
                    f"    v{a} = (v{a} + v{b} + m{m}) & L",
                    f"    t = v{d} ^ v{a}",
                    f"    v{d} = ((t >> {r1}) | (t << {32 - r1})) & L",
                    f"    v{c} = (v{c} + v{d}) & L",
                    f"    t = v{b} ^ v{c}",
                    f"    v{b} = ((t >> {r2}) | (t << {32 - r2})) & L",
                ]
        schedule = [schedule[p] for p in MSG_PERMUTATION]
    lines.append("    return (" + ", ".join(f"v{i} ^ v{i + 8}" for i in range(8)) + ")")
    return "\n".join(lines) + "\n"


_namespace: dict = {}
exec(compile(_compress_source(), "<blake3 compress>", "exec"), _namespace)  # noqa: S102
_compress = _namespace["compress"]


class _Lanes:
    """Constants for hashing `n` chunks side by side, one per 64-bit lane."""

    __slots__ = ("ones", "mask", "iv", "ramp", "block_len", "chunk_flags", "parent_flags")

    def __init__(self, n: int) -> None:
        self.ones = sum(1 << (_LANE_BITS * k) for k in range(n))
        self.mask = 0xFFFFFFFF * self.ones
        self.iv = tuple(word * self.ones for word in IV)
        self.ramp = sum(k << (_LANE_BITS * k) for k in range(n))  # lane k: chunk counter + k
        self.block_len = BLOCK_LEN * self.ones
        flags = [0] * BLOCKS_PER_CHUNK
        flags[0] |= CHUNK_START
        flags[-1] |= CHUNK_END
        self.chunk_flags = tuple(f * self.ones for f in flags)
        self.parent_flags = PARENT * self.ones


_LANES = [_Lanes(n) if n else None for n in range(MAX_LANES + 1)]


def _hash_chunks(data: memoryview, counter: int, n: int) -> list[tuple[tuple[int, ...], int]]:
    """Hash `n` <= MAX_LANES full chunks; return their subtrees, left to right.

    The result is the binary decomposition of n: (chaining value, chunk count)
    for each complete power-of-two subtree, largest first.  `counter` must be
    a multiple of MAX_LANES so these subtrees are the ones of the BLAKE3 tree.
    None of these chunks is the last of the input, so nothing here is ROOT.
    """
    lanes = _LANES[n]
    L = lanes.mask
    # Transpose: one 8-byte item of the input holds two consecutive message
    # words of one chunk; every 128th item gathers that pair across all n
    # chunks at once, already in 64-bit lanes.  Only raw bytes are moved, so
    # this does not depend on the host's byte order.
    items = data.cast("Q")
    words = []
    for p in range(CHUNK_LEN // 8):
        both = int.from_bytes(items[p::CHUNK_LEN // 8].tobytes(), "little")
        words.append(both & L)
        words.append((both >> 32) & L)
    t0 = (counter & 0xFFFFFFFF) * lanes.ones + lanes.ramp  # aligned: no lane carries
    t1 = (counter >> 32) * lanes.ones
    iv0, iv1, iv2, iv3 = lanes.iv[:4]
    cv = lanes.iv
    for b in range(BLOCKS_PER_CHUNK):
        cv = _compress(cv, words[16 * b:16 * b + 16], t0, t1, lanes.block_len,
                       lanes.chunk_flags[b], L, iv0, iv1, iv2, iv3)
    # Parents, one tree level at a time: lanes 2k and 2k+1 -> lane k.  An odd
    # lane out is a finished subtree of this level's size.
    finished = []
    size = 1
    while True:
        if n & 1:
            shift = _LANE_BITS * (n - 1)
            finished.append((tuple((word >> shift) & 0xFFFFFFFF for word in cv), size))
        pairs = n >> 1
        if not pairs:
            return finished[::-1]
        left, right = [], []
        for word in cv:
            items = memoryview(word.to_bytes(8 * n, "little")).cast("Q")
            left.append(int.from_bytes(items[0:2 * pairs:2].tobytes(), "little"))
            right.append(int.from_bytes(items[1:2 * pairs:2].tobytes(), "little"))
        n = pairs
        size *= 2
        lanes = _LANES[n]
        iv0, iv1, iv2, iv3 = lanes.iv[:4]
        cv = _compress(lanes.iv, left + right, 0, 0, lanes.block_len, lanes.parent_flags,
                       lanes.mask, iv0, iv1, iv2, iv3)


def _parent(left: tuple[int, ...], right: tuple[int, ...], flags: int) -> tuple[int, ...]:
    return _compress(IV, left + right, 0, 0, BLOCK_LEN, PARENT | flags,
                     0xFFFFFFFF, IV[0], IV[1], IV[2], IV[3])


def _push(stack: list, chunks: int, cv: tuple[int, ...], n: int) -> int:
    """Add the subtree of `n` chunks to `stack`; return the new chunk count.

    Merge while the stack holds more subtrees than the chunk count has one
    bits: each bit is one complete power-of-two subtree.  The pushed subtree
    is never the last of the input, so none of these parents is the root.
    """
    stack.append(cv)
    chunks += n
    while len(stack) > chunks.bit_count():
        right = stack.pop()
        stack[-1] = _parent(stack[-1], right, 0)
    return chunks


class Blake3:
    """Incremental BLAKE3 hasher with the `blake3.blake3` calling conventions we use."""

    __slots__ = ("_stack", "_chunks", "_pending")
    name = "blake3"
    digest_size = DIGEST_SIZE
    block_size = BLOCK_LEN

    def __init__(self, data=None) -> None:
        self._stack: list[tuple[int, ...]] = []  # chaining values of complete subtrees
        self._chunks = 0  # chunks folded into the stack, always a multiple of MAX_LANES
        self._pending = bytearray()  # input not hashed yet, <= one full batch
        if data is not None:
            self.update(data)

    def update(self, data) -> "Blake3":
        """Absorb `data`.

        Input is buffered until a full batch of MAX_LANES chunks is followed by
        at least one more byte: small updates then still hash at full width, and
        the last chunk, hashed differently (ROOT when alone), waits for digest().
        """
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
            view = view.cast("B")
        batch = MAX_LANES * CHUNK_LEN
        if len(self._pending) + len(view) <= batch:
            self._pending += view
            return self
        source = memoryview(self._pending + view) if self._pending else view
        pos = 0
        while len(source) - pos > batch:
            for cv, size in _hash_chunks(source[pos:pos + batch], self._chunks, MAX_LANES):
                self._chunks = _push(self._stack, self._chunks, cv, size)
            pos += batch
        self._pending = bytearray(source[pos:])
        return self

    def digest(self) -> bytes:
        """The 32-byte hash of everything absorbed so far; the state is unchanged."""
        stack = list(self._stack)
        chunks = self._chunks
        data = memoryview(bytes(self._pending))
        ready = (len(data) - 1) // CHUNK_LEN if data else 0  # all but the last chunk
        if ready:
            for cv, size in _hash_chunks(data[:ready * CHUNK_LEN], chunks, ready):
                chunks = _push(stack, chunks, cv, size)
        pos = ready * CHUNK_LEN
        # The last chunk (possibly empty), then the stack folded from the right.
        tail = data[pos:]
        blocks = max(1, -(-len(tail) // BLOCK_LEN))
        last_len = len(tail) - BLOCK_LEN * (blocks - 1)
        padded = tail.tobytes() + bytes(BLOCK_LEN - last_len)
        root = 0 if stack else ROOT
        cv = IV
        for b in range(blocks):
            final = b == blocks - 1
            cv = _compress(cv, _WORDS.unpack_from(padded, BLOCK_LEN * b),
                           chunks & 0xFFFFFFFF, chunks >> 32,
                           last_len if final else BLOCK_LEN,
                           (CHUNK_START if b == 0 else 0) | (CHUNK_END | root if final else 0),
                           0xFFFFFFFF, IV[0], IV[1], IV[2], IV[3])
        for i in range(len(stack) - 1, -1, -1):
            cv = _parent(stack[i], cv, ROOT if i == 0 else 0)
        return b"".join(word.to_bytes(4, "little") for word in cv)

    def hexdigest(self) -> str:
        return self.digest().hex()


def new_hasher() -> Blake3:
    return Blake3()
