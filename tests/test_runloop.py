"""The run loop of long-running commands: rounds, pauses, backoff after failures, clean stop on signals."""

import os
import signal
import threading
import time

import pytest

from dbmail.ops.runloop import Round, RunLoop, restores_signals


def test_failures_in_a_row_double_the_pause_up_to_the_cap_and_a_success_resets_it():
    loop = RunLoop(2, max_backoff=10)
    assert [loop.pause(Round.FAILED) for _ in range(5)] == [2, 4, 8, 10, 10]
    assert loop.pause(Round.DONE) == 2
    assert loop.pause(Round.FAILED) == 2  # counting starts again
    assert loop.pause(Round.BUSY) == 0


def test_the_cap_is_never_below_the_interval():
    assert RunLoop(600, max_backoff=10).pause(Round.FAILED) == 600


def test_rounds_run_until_one_stops_the_loop():
    loop = RunLoop(0)
    outcomes = [Round.BUSY, None, Round.FAILED, Round.DONE]
    seen = []

    def one_round():
        seen.append(outcomes[len(seen)])
        if len(seen) == len(outcomes):
            loop.stop()
        return seen[-1]

    loop.run(one_round)
    assert seen == outcomes and loop.stopping


def test_a_stop_cuts_a_long_sleep_short_and_calls_the_stop_hooks():
    stopped_work = []
    loop = RunLoop(3600, on_stop=[lambda: stopped_work.append(True)])
    threading.Timer(0.3, loop.stop).start()
    started = time.monotonic()
    loop.run(lambda: Round.DONE)
    assert time.monotonic() - started < 5
    assert stopped_work == [True]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_the_loop_instead_of_the_process(sig):  # conftest restores the handlers
    loop = RunLoop(3600).handle_signals()
    rounds = []

    def one_round():
        rounds.append(1)
        os.kill(os.getpid(), sig)  # delivered to this (main) thread before the sleep starts

    loop.run(one_round)
    assert loop.stopping and rounds == [1]


def _stop_flag_command():
    loop = RunLoop(1)

    @restores_signals
    def handle(fail=False):
        loop.handle_signals()
        assert signal.getsignal(signal.SIGINT) == loop.stop
        if fail:
            raise RuntimeError("the command failed")

    return handle


@pytest.mark.parametrize("fail", [False, True])
def test_a_command_gives_the_stop_signals_back_as_it_found_them(fail):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    handle = _stop_flag_command()
    if fail:
        with pytest.raises(RuntimeError):
            handle(fail=True)
    else:
        handle()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("command", ["dbmail_cron", "dbmail_track"])
def test_the_looping_commands_run_in_process_leave_ctrl_c_working(command):
    from django.core.management import call_command

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    call_command(command)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
