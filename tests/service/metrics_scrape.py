"""Read a server's /metrics and compare scrapes, so tests can assert exact counts of their own traffic."""

from __future__ import annotations

from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One /metrics answer as samples: (name, labels) → value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    @classmethod
    def of(cls, url: str) -> Scrape:
        response = httpx.get(url + "/metrics", timeout=30.0)
        response.raise_for_status()
        return cls(response.text)

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of the samples of `name` whose labels include `labels`; None when there are none."""
        values = [
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values) if values else None

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample of `name`."""
        return [labels for sample_name, labels, _ in self.samples if sample_name == name]


class MetricsDelta:
    """`with MetricsDelta(url) as delta: ...traffic...`, then `delta(name, **labels)` is the increase."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.before = Scrape("")
        self.after = Scrape("")

    def __enter__(self) -> MetricsDelta:
        self.before = Scrape.of(self.url)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.after = Scrape.of(self.url)

    def __call__(self, name: str, **labels: str) -> float:
        return (self.after.value(name, **labels) or 0.0) - (self.before.value(name, **labels) or 0.0)

    def so_far(self, name: str, **labels: str) -> float:
        """The increase up to now, scraped inside the `with` block (for traffic that repeats until it
        has shown what a test needs)."""
        return (Scrape.of(self.url).value(name, **labels) or 0.0) - (self.before.value(name, **labels) or 0.0)

    def sum(self, name: str, **labels: str) -> float:
        """Same as calling the delta; reads better for counters split by a label the test sums over."""
        return self(name, **labels)
