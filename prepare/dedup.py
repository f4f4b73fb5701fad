"""Duplicate images: perceptual hashes and the groups of near-identical images.

- ``group_duplicates(hashes, max_distance)`` (pure): images whose hashes differ in
  at most ``max_distance`` bits are linked, and the connected components of those
  links are the groups (union-find over near pairs). Identical hashes are bucketed
  first; near pairs are then found among the distinct hashes with the pigeonhole
  rule (split the bits into ``max_distance + 1`` chunks: two hashes within the
  distance agree exactly on at least one chunk), so no all-pairs comparison is
  made. Group ids are ``0..G-1`` in the order of each group's first NAME; an image
  without duplicates is a group of its own.
- ``compute_hashes(paths, ...)``: the hashes of image files (imagehash), cached
  in a CSV keyed by file size, mtime and ctime.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cytocore.images import cached, n_workers
from cytocore.io import DataError, Problem

log = logging.getLogger(__name__)

METHODS = ("phash", "dhash", "ahash", "whash")


def hash_bits(hashes: pd.Series | list[str]) -> np.ndarray:
    """Hex hash strings (as ``str(imagehash.ImageHash)``) -> a ``(N, bytes)`` uint8 array."""
    values = [str(h) for h in hashes]
    if not values:
        return np.zeros((0, 1), dtype=np.uint8)
    width = max(len(v) for v in values)
    width += width % 2
    return np.array([list(bytes.fromhex(v.rjust(width, "0"))) for v in values], dtype=np.uint8)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance of each row of ``a`` to the matching row of ``b``."""
    return np.bitwise_count(a ^ b).sum(axis=-1)


def near_pairs(packed: np.ndarray, max_distance: int, block: int = 512) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of rows of ``packed`` within ``max_distance`` bits.

    Rows are assumed distinct (bucket identical hashes first). Candidates come from
    rows that agree exactly on one of ``max_distance + 1`` bit chunks.
    """
    n, nbytes = packed.shape
    if n < 2 or max_distance < 1:
        return np.zeros((0, 2), dtype=np.int64)
    bits = np.unpackbits(packed, axis=1)
    chunks = np.array_split(np.arange(bits.shape[1]), min(max_distance + 1, bits.shape[1]))
    found = []
    for chunk in chunks:
        _, bucket = np.unique(np.packbits(bits[:, chunk], axis=1), axis=0, return_inverse=True)
        bucket = bucket.ravel()
        order = np.argsort(bucket, kind="stable")
        bounds = np.flatnonzero(np.r_[True, bucket[order][1:] != bucket[order][:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi - lo < 2:
                continue
            members = np.sort(order[lo:hi])
            for start in range(0, len(members), block):
                rows = members[start:start + block]
                dist = np.bitwise_count(packed[rows][:, None, :] ^ packed[members][None, :, :]).sum(-1)
                i, j = np.nonzero((dist <= max_distance) & (rows[:, None] < members[None, :]))
                found.append(np.stack([rows[i], members[j]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def group_duplicates(hashes: pd.Series, max_distance: int) -> pd.Series:
    """Duplicate-group id of each image: ``hashes`` is hex strings indexed by NAME.

    Returns an int64 Series indexed by NAME (sorted), ids ``0..G-1`` ordered by the
    first NAME of each group.
    """
    if max_distance < 0:
        raise ValueError(f"hash distance must be >= 0, got {max_distance}")
    hashes = hashes.sort_index()
    codes, uniques = pd.factorize(hashes.astype(str).to_numpy())
    pairs = near_pairs(hash_bits(list(uniques)), max_distance)
    n = len(uniques)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    comp = component[codes]
    # Renumber by first appearance in NAME order (hashes are sorted by NAME).
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return pd.Series(rank[comp], index=hashes.index, name="group")


def group_summary(groups: pd.Series) -> dict:
    """Counts of the duplicate groups: images in groups of 2+, groups of 2+, largest group."""
    sizes_ = groups.value_counts()
    multi = sizes_[sizes_ > 1]
    return {
        "images_in_duplicate_groups": int(multi.sum()),
        "duplicate_groups": int(len(multi)),
        "largest_group": int(sizes_.max()) if len(sizes_) else 0,
    }


def hasher(method: str, hash_size: int) -> Callable[[Path], str]:
    """A function path -> hex hash string for one of ``METHODS``."""
    import imagehash
    from PIL import Image

    if method not in METHODS:
        raise ValueError(f"unknown hash method {method!r}; valid: {', '.join(METHODS)}")
    func = getattr(imagehash, method)
    draft = (hash_size * 8, hash_size * 8)

    def one(path: Path) -> str:
        try:
            with Image.open(path) as im:
                im.draft("L", draft)  # JPEG: decode at reduced scale (the hash shrinks it anyway)
                return str(func(im.convert("L"), hash_size=hash_size))
        except OSError as exc:  # PIL's decoding errors are OSErrors
            raise ValueError(f"cannot decode image ({exc})") from None

    return one


def compute_hashes(files: pd.DataFrame, cache_file: Path, method: str, hash_size: int,
                   workers: int = 0) -> pd.Series:
    """Hex hashes of ``files`` (``NAME,path,mtime_ns,bytes``) as a Series indexed by NAME.

    Results are cached in ``cache_file``; a file whose size, mtime or ctime changed is hashed again.
    """
    one = hasher(method, hash_size)

    def safe(path: Path) -> tuple[str, str]:
        try:
            return one(path), ""
        except ValueError as exc:
            return "", str(exc)

    def compute(paths: list[Path]) -> pd.DataFrame:
        with ThreadPoolExecutor(max_workers=n_workers(workers)) as pool:
            done = list(pool.map(safe, paths))
        errors = [Problem(str(p), msg) for p, (_, msg) in zip(paths, done) if msg]
        if errors:
            raise DataError(errors)
        return pd.DataFrame({"hash": [h for h, _ in done]})

    table = cached(cache_file, files, compute, what=f"{method} hashes")
    return table.set_index("NAME")["hash"].astype(str)
