"""Near-duplicate faces: the same photo re-encoded, re-cropped by a pixel or two, or with a watermark changed.

Two stages, numpy only, on the preprocessed 48x48 grayscale pixels (batch_job.preprocessing.load_image):
1. candidates: a 12x12 block-mean fingerprint per image (zero mean, unit norm), cosine similarity >= 0.9,
   found with one matrix product per chunk of images. It tolerates shifts and re-encoding.
2. confirmation: the Pearson correlation of the full 48x48 pixels, maximised over shifts of up to 2 px
   (on the overlapping region), must be >= 0.95.

Why not a 64-bit difference hash with a Hamming radius: measured on this dataset, aligned face crops are so
alike that unrelated faces sit a few bits apart (about 5,000 pairs within 6 bits), while confirmed
near-duplicates spread past 10 bits, so no radius separates the two. At a correlation of 0.95 every pair we
inspected was the same photo; below about 0.92 different people start to appear.
"""
from __future__ import annotations

import numpy as np

BLOCK = 4  # 48x48 -> 12x12 fingerprint
CANDIDATE_SIMILARITY = 0.9
MIN_CORRELATION = 0.95
MAX_SHIFT = 2


def fingerprints(pixels: np.ndarray) -> np.ndarray:
    """(N, 48, 48[, 1]) pixels -> (N, 144) float32 block means, zero mean and unit norm per image."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 4:
        pixels = pixels.mean(axis=3)
    n, height, width = pixels.shape
    grid = pixels.reshape(n, height // BLOCK, BLOCK, width // BLOCK, BLOCK).mean(axis=(2, 4)).reshape(n, -1)
    grid -= grid.mean(axis=1, keepdims=True)
    return grid / (np.linalg.norm(grid, axis=1, keepdims=True) + 1e-6)


def shifted_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Pairwise (a[k], b[k]) Pearson correlation of the pixels, the best over shifts of up to max_shift px."""
    a = np.asarray(a, dtype=np.float32).reshape(len(a), *np.shape(a)[1:3])
    b = np.asarray(b, dtype=np.float32).reshape(len(b), *np.shape(b)[1:3])
    height, width = a.shape[1:]
    best = np.full(len(a), -1.0, dtype=np.float32)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            pa = a[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)].reshape(len(a), -1)
            pb = b[:, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)].reshape(len(b), -1)
            pa = pa - pa.mean(axis=1, keepdims=True)
            pb = pb - pb.mean(axis=1, keepdims=True)
            corr = (pa * pb).sum(axis=1) / np.sqrt((pa * pa).sum(axis=1) * (pb * pb).sum(axis=1) + 1e-6)
            best = np.maximum(best, corr)
    return best


def near_duplicate_pairs(pixels: np.ndarray, others: np.ndarray | None = None,
                         min_correlation: float = MIN_CORRELATION, chunk: int = 1024) -> np.ndarray:
    """Near-duplicate pairs as an (M, 3) float array of (i, j, correlation).

    Without `others`: pairs i < j within `pixels`. With `others`: i indexes `pixels`, j indexes `others`.
    Byte-identical copies are near-duplicates too (correlation 1.0); filter them out by digest if unwanted.
    """
    query = fingerprints(pixels)
    target = query if others is None else fingerprints(others)
    target_pixels = pixels if others is None else others
    found = []
    for start in range(0, len(query), chunk):
        similarity = query[start:start + chunk] @ target.T
        i, j = np.nonzero(similarity >= CANDIDATE_SIMILARITY)
        i = i + start
        if others is None:
            keep = j > i
            i, j = i[keep], j[keep]
        if len(i):
            corr = np.concatenate([shifted_correlation(pixels[i[k:k + 4096]], target_pixels[j[k:k + 4096]])
                                   for k in range(0, len(i), 4096)])
            keep = corr >= min_correlation
            found.append(np.stack([i[keep], j[keep], corr[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3))


def groups(n: int, pairs) -> list[list[int]]:
    """Connected components (size >= 2) of the graph with these (i, j) edges, each sorted, largest first."""
    parent = list(range(n))

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in pairs:
        root_i, root_j = find(int(i)), find(int(j))
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    members: dict[int, list[int]] = {}
    for k in range(n):
        members.setdefault(find(k), []).append(k)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))
