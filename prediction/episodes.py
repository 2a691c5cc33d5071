"""From per-sample anomaly scores to alert episodes: an Alert when one opens, its update when it closes.

An episode opens on the first anomalous sample (``is_anomaly``), stays open
while samples keep scoring at or above the lower ``close_threshold``
(hysteresis: a noisy episode whose score dips just under the threshold is not
split), and closes once no such sample has been seen for ``min_gap_s`` of
event time. Each episode gives two Alert records (``schemas/alert.avsc``) with
the same ``alert_id`` (node and start, so a replay emits the same ids):

* at **open**, at once: start, score and contributing features, ``end_ts_ms``
  null (the schema's "still open");
* at **close**: the true end, the peak, the sample count. A consumer keyed by
  ``alert_id`` keeps the latest.

Closing needs a later sample, or `EpisodeDetector.flush`: the control flow
flushes a node that has gone idle and every node at the end of its input.

>>> from prediction.anomaly import AnomalyResult
>>> episodes = EpisodeDetector("n1", min_gap_s=5)
>>> def sample(ts_s, score, threshold=0.9999):
...     return episodes.observe(ts_s * 1000, AnomalyResult(score, score >= threshold, {"temp": 9.0}))
>>> sample(0, 0.3)
[]
>>> [opened] = sample(1, 0.99995)     # published at once
>>> opened["alert_id"], opened["start_ts_ms"], opened["end_ts_ms"], opened["samples"]
('n1:anomaly:1000', 1000, None, 1)
>>> [sample(2, 0.9995), sample(3, 0.99999), sample(4, 0.2)]
[[], [], []]
>>> [closed] = sample(9, 0.1)          # 5 s without an anomalous sample: the episode closes
>>> closed["alert_id"], closed["start_ts_ms"], closed["peak_ts_ms"], closed["end_ts_ms"], closed["samples"]
('n1:anomaly:1000', 1000, 3000, 3000, 3)
>>> closed["contributing_features"], closed["message"]
(['temp'], 'anomaly on n1: 3 samples over 2 s, peak score 0.99999 (temp +9.0σ)')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from schemas.state import Versioned


@dataclass
class AnomalyEpisode:
    """An open episode: where it started, its peak so far, when it was last anomalous."""

    node_id: str
    start_ts_ms: int
    peak_ts_ms: int
    peak_score: float
    last_ts_ms: int
    samples: int = 1
    peak_contributions: dict = field(default_factory=dict)   # feature -> σ at the peak, top first

    def add(self, ts_ms: int, result, top_features: int = 3) -> None:
        """One more sample of the episode (an `AnomalyResult`); its features are ranked only at a new peak."""
        self.samples += 1
        self.last_ts_ms = ts_ms
        score = result.score
        if score > self.peak_score:
            contributions = result.contributions
            self.peak_score, self.peak_ts_ms = score, ts_ms
            self.peak_contributions = {name: contributions[name] for name in result.top_features(top_features)
                                       if name in contributions}

    def opening_alert(self) -> dict:
        """The Alert record published when the episode opens (``end_ts_ms`` null: still open)."""
        alert = self.to_alert()
        evidence = ", ".join(f"{name} {sigma:+.1f}σ" for name, sigma in self.peak_contributions.items())
        alert["end_ts_ms"] = None
        alert["message"] = (f"anomaly on {self.node_id} opened, score {self.peak_score:.5f}"
                            + (f" ({evidence})" if evidence else ""))
        return alert

    def to_alert(self) -> dict:
        """The Alert record of this episode, closed at its last anomalous sample."""
        evidence = ", ".join(f"{name} {sigma:+.1f}σ" for name, sigma in self.peak_contributions.items())
        duration_s = (self.last_ts_ms - self.start_ts_ms) / 1000.0
        return {
            "alert_id": f"{self.node_id}:anomaly:{self.start_ts_ms}",
            "node_id": self.node_id,
            "kind": "anomaly",
            "start_ts_ms": self.start_ts_ms,
            "peak_ts_ms": self.peak_ts_ms,
            "end_ts_ms": self.last_ts_ms,
            "peak_score": float(self.peak_score),
            "samples": self.samples,
            "contributing_features": list(self.peak_contributions),
            "message": (f"anomaly on {self.node_id}: {self.samples} sample{'s' if self.samples != 1 else ''} "
                        f"over {duration_s:.0f} s, peak score {self.peak_score:.5f}"
                        + (f" ({evidence})" if evidence else "")),
        }


@dataclass
class EpisodeDetector(Versioned):
    """Per-node episode state: feed every scored sample, collect the Alert records it opens and closes.

    Parameters
    ----------
    node_id
        Node the alerts are about (and their Kafka key).
    close_threshold
        Hysteresis level: an open episode continues on samples at or above it
        even when they are not anomalous on their own.
    min_gap_s
        Event time without such a sample after which the episode closes.
    top_features
        Contributing features an alert names.
    """

    # 2: an Alert is published when an episode opens, not only when it closes. Version-1 state has
    # the same shape; an episode open in it had no opening alert, and its closing one still comes.
    STATE_VERSION = 2
    MIGRATIONS = {1: lambda state: state}
    node_id: str
    close_threshold: float = 0.999
    min_gap_s: float = 30.0
    top_features: int = 3
    open: Optional[AnomalyEpisode] = None
    episodes: int = 0
    version: int = STATE_VERSION

    def observe(self, ts_ms: int, result) -> list[dict]:
        """Take one scored sample (an `AnomalyResult`); the Alert records it closes and opens (0 to 2)."""
        alerts = []
        ep = self.open
        if ep is not None and ts_ms - ep.last_ts_ms > self.min_gap_s * 1000.0:
            alerts.append(ep.to_alert())
            self.open = ep = None
        if ep is not None:
            if result.is_anomaly or result.score >= self.close_threshold:
                ep.add(ts_ms, result, self.top_features)
        elif result.is_anomaly:
            top = result.top_features(self.top_features)
            self.open = AnomalyEpisode(self.node_id, ts_ms, ts_ms, result.score, ts_ms,
                                       peak_contributions={n: result.contributions[n] for n in top
                                                           if n in result.contributions})
            self.episodes += 1
            alerts.append(self.open.opening_alert())
        return alerts

    @property
    def is_open(self) -> bool:
        return self.open is not None

    def flush(self) -> list[dict]:
        """Close the open episode now (end of a stream, a node gone idle, a replay): its closing Alert."""
        if self.open is None:
            return []
        alert = self.open.to_alert()
        self.open = None
        return [alert]
