#!/usr/bin/env python3
"""Decode a sluice-bench .hlog with the independent HdrHistogram decoder
from PyPI (`pip install hdrhistogram`, module `hdrh`) and print
`<total count> <intervals> <max value>` for the Rust test to compare."""
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader


def main(path):
    reference = HdrHistogram(1, 3_600_000_000, 3)
    reader = HistogramLogReader(path, reference)
    total = 0
    intervals = 0
    max_value = 0
    while True:
        hist = reader.get_next_interval_histogram()
        if hist is None:
            break
        intervals += 1
        total += hist.get_total_count()
        max_value = max(max_value, hist.get_max_value())
    reader.close()
    print(total, intervals, max_value)


if __name__ == "__main__":
    main(sys.argv[1])
