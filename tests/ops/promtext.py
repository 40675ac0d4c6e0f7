"""Reading a /metrics page and the metric names a PromQL expression uses (for the ops tests
and tests/e2e/test_metrics.py)."""
from __future__ import annotations

import re

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

# Grafana's built-in variables, replaced by a plausible value before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Series that Prometheus itself makes for every target (alerts may use them).
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


class Scrape:
    """A parsed /metrics page: sample values by (name, labels), and every sample name."""

    def __init__(self, text: str):
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    @property
    def names(self) -> set[str]:
        return {name for name, _labels in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample `name` with exactly these labels (KeyError if absent)."""
        return self.samples[(name, frozenset(labels.items()))]

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (sample, sample_labels), value in self.samples.items()
                   if sample == name and wanted <= set(sample_labels))


def expression_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed). Raises
    ValueError if it does not parse."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    if re.search(r"\$\w+", expr):
        raise ValueError(f"unknown template variable in {expr!r}")
    names: set[str] = set()

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
