"""Progress of a memorization estimate: members done out of K, with the rate and an ETA."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Progress:
    """Members done / K with an ETA: a tqdm bar (if ``enabled``) plus a log line every ~10 %.

    Args:
        total: K, the members of the estimate.
        initial: members already done (loaded from a work directory); the rate counts only
            the members finished after this.
        enabled: show the tqdm bar (the log lines are written regardless).
    """

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.total, self.done, self.start_done = total, initial, initial
        self.t0 = time.perf_counter()
        self.next_log = initial + max(1, total // 10)
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="memorization", unit="member")

    def update(self, k: int) -> None:
        """``k`` more members are done."""
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
        if self.done >= self.next_log or self.done == self.total:
            self.next_log = self.done + max(1, self.total // 10)
            rate = (self.done - self.start_done) / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info(
                "memorization: %d/%d members, %.2f members/s, ETA %.0f s",
                self.done,
                self.total,
                rate,
                eta,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
