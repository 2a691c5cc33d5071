"""The node's result cache: repeated or near-duplicate inputs answered without running the model.

An input's key is a digest of its values quantised to ``levels`` steps over
[``low``, ``high``], so inputs that differ only by small noise share a key
(near-duplicates) while different inputs do not. The cache is bounded
(least recently used entries leave first) and counts its hits, so the worker
can report the hit rate a morph command's ``cache`` flag earns. It is what
the seed's network-congestion case uses: a hit costs a hash, not a model call
or an upstream fetch.

>>> import numpy as np
>>> cache = ResultCache(capacity=2)
>>> x = np.array([[0.10, 0.50], [0.90, 0.20]], dtype=np.float32)
>>> labels, hit = cache.lookup(x)
>>> hit.tolist()
[False, False]
>>> cache.store(x, np.array([3, 7]))
>>> labels, hit = cache.lookup(x + 0.001)               # near-duplicates hit
>>> labels.tolist(), hit.tolist(), cache.hit_rate
([3, 7], [True, True], 0.5)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


class ResultCache:
    """Bounded LRU map from an input digest to the label the model gave it."""

    def __init__(self, capacity: int = 4096, levels: int = 16, low: float = 0.0, high: float = 1.0):
        if capacity < 1 or levels < 2 or high <= low:
            raise ValueError("need capacity >= 1, levels >= 2 and high > low")
        self.capacity, self.levels, self.low, self.high = capacity, levels, low, high
        self._entries: OrderedDict[bytes, int] = OrderedDict()
        self.hits = self.misses = 0

    def digest(self, x: np.ndarray) -> bytes:
        """The key of one input: its values quantised, hashed."""
        q = np.clip((np.asarray(x, dtype=np.float32) - self.low) / (self.high - self.low), 0.0, 1.0)
        return hashlib.blake2b(np.rint(q * (self.levels - 1)).astype(np.uint8).tobytes(), digest_size=16).digest()

    def lookup(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, hit mask) for a batch; labels are -1 where it missed."""
        labels = np.full(len(batch), -1, dtype=np.int64)
        hit = np.zeros(len(batch), dtype=bool)
        for i, x in enumerate(batch):
            key = self.digest(x)
            if key in self._entries:
                self._entries.move_to_end(key)
                labels[i], hit[i] = self._entries[key], True
        self.hits += int(hit.sum())
        self.misses += int((~hit).sum())
        return labels, hit

    def store(self, batch: np.ndarray, labels: np.ndarray) -> None:
        for x, label in zip(batch, labels):
            key = self.digest(x)
            self._entries[key] = int(label)
            self._entries.move_to_end(key)
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._entries)
