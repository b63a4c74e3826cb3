#!/usr/bin/env python3
"""Flipper's percentage-of-actors gate, reimplemented from flipper's lib/flipper/gates/percentage_of_actors.rb
as an independent oracle for tests/api/flipper_cohort.rs (standard library only, no venv).

    python3 bucket.py FEATURE PERCENTAGE... < actor ids, one per line

prints `PERCENTAGE<TAB>ACTOR` for every actor the gate lets in at that percentage. Flipper (one actor):

    return false if percentage <= 0
    return true if percentage >= 100
    Zlib.crc32("#{feature_name}#{actor.value}") % (100 * SCALING_FACTOR) < percentage * SCALING_FACTOR

with SCALING_FACTOR = 1_000; Ruby compares the Integer bucket with the Float product unrounded.
"""
import sys
import zlib

SCALING_FACTOR = 1_000


def enabled(feature: str, actor: str, percentage: float) -> bool:
    if percentage <= 0:
        return False
    if percentage >= 100:
        return True
    return zlib.crc32(f"{feature}{actor}".encode("utf-8")) % (100 * SCALING_FACTOR) < percentage * SCALING_FACTOR


def main() -> None:
    feature, percentages = sys.argv[1], sys.argv[2:]
    actors = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    out = sys.stdout
    for text in percentages:
        percentage = float(text)
        for actor in actors:
            if enabled(feature, actor, percentage):
                out.write(f"{text}\t{actor}\n")


if __name__ == "__main__":
    main()
