"""Parses a /metrics scrape (stdin) with prometheus_client's two parsers.

The Prometheus text parser (format 0.0.4) and the OpenMetrics parser (the
content type the server announces) must both accept it. Prints, as JSON,
every sample each parser saw: [family, sample name, labels, value]. Exits 1
with the parser's error when either refuses the text.
"""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families


def samples(families):
    return [
        [family.name, s.name, s.labels, s.value]
        for family in families
        for s in family.samples
    ]


def main():
    text = sys.stdin.read()
    out = {}
    for name, parse in [("text", text_families), ("openmetrics", openmetrics_families)]:
        try:
            out[name] = samples(parse(text))
        except Exception as e:  # the parser's own error, shown to the test
            print(f"{name} parser refused the scrape: {e!r}", file=sys.stderr)
            return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
