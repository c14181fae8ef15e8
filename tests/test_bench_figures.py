"""The benchmark's own figures: what the table says about a run must be what was measured."""

from __future__ import annotations

import os
import time

from bench.__main__ import _main_thread_row, _row
from bench.support.cpu import MainThreadShare, main_thread_seconds


def test_a_spinning_main_thread_is_seen_running_most_of_the_time():
    share = MainThreadShare(os.getpid())
    before = share.before()
    started = time.perf_counter()
    while time.perf_counter() - started < 0.3:
        pass
    share.add(before, time.perf_counter() - started)
    figures = share.figures()
    # Spinning, this thread runs or waits for a CPU for the whole round.
    assert figures["main_thread_running_share"] + figures[
        "main_thread_waiting_for_cpu_share"] > 0.8
    assert figures["main_thread_running_share"] > 0.3


def test_a_sleeping_main_thread_is_seen_idle():
    share = MainThreadShare(os.getpid())
    before = share.before()
    time.sleep(0.3)
    share.add(before, 0.3)
    assert share.figures()["main_thread_running_share"] < 0.2


def test_a_process_that_is_gone_reads_as_not_a_number():
    running, waiting = main_thread_seconds(2**22 + 12345)
    assert running != running and waiting != waiting  # NaN


def test_the_main_thread_row_states_both_sides_and_is_information_only():
    row = _main_thread_row(
        "billing's main thread",
        {"main_thread_running_share": 0.69, "main_thread_waiting_for_cpu_share": 0.254},
        {"main_thread_running_share": 0.63, "main_thread_waiting_for_cpu_share": 0.3})
    assert row["value"] == "running 69%, waiting for a CPU 25%"
    assert row["baseline"] == "echo's: running 63%, waiting 30%"
    assert row["status"] == "info"


def test_a_missing_figure_leaves_the_row_empty_rather_than_guessed():
    row = _main_thread_row("x", {"main_thread_running_share": 0.5}, {})
    assert row["value"] is None


def test_a_target_row_says_not_met_below_its_target_and_failed_on_errors():
    assert _row("f", 1, "", 0.47, ">= 0.6", False)["status"] == "NOT MET"
    assert _row("f", 1, "", 0.61, ">= 0.6", True)["status"] == "met"
    assert _row("f", 1, "", 0.61, ">= 0.6", True, ["2 errors"])["status"] == "FAILED"


def test_a_second_hop_row_has_no_echo_to_compare_with():
    row = _main_thread_row(
        "billing's main thread (second hop)",
        {"billing_main_thread_running_share": 0.2,
         "billing_main_thread_waiting_for_cpu_share": 0.1}, None, "billing_")
    assert (row["value"], row["baseline"]) == ("running 20%, waiting for a CPU 10%", "")
