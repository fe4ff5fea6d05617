"""The abort policy judges error rates, not chance: a second with a handful of answers is pooled with
the next ones before it counts (a CI host starved the client for a second, three answers came back and
two were wrong vectors at a 20 % error rate, and a tolerated sweep was aborted)."""
from benchmarks.sweep import AbortWatch


def feed(watch: AbortWatch, seconds) -> int | None:
    """The second at which the policy fires, or None."""
    for sec, (ok, errors) in enumerate(seconds):
        if watch.add(sec, ok, errors):
            return sec
    return None


def test_a_starved_second_with_few_answers_does_not_fire_a_one_second_window():
    watch = AbortWatch(threshold=0.5, window_s=1)
    # 20 % errors at ~120 answers/s, one starved second holding 1 good and 2 wrong answers.
    assert feed(watch, [(1, 2), (98, 24), (97, 25)]) is None


def test_a_dead_server_fires_after_the_window():
    watch = AbortWatch(threshold=0.5, window_s=5)
    assert feed(watch, [(0, 400)] * 10) == 4


def test_a_slowly_failing_server_is_pooled_and_fires():
    # Two answers a second, all failing: each judgement pools 5 seconds, so the 5 s window fills at once.
    watch = AbortWatch(threshold=0.5, window_s=5)
    assert feed(watch, [(0, 2)] * 10) == 4


def test_silent_seconds_inside_a_pool_count_toward_the_window():
    # A server whose every request times out: an error now and then, silent seconds between.
    watch = AbortWatch(threshold=0.5, window_s=20)
    seconds = [(0, 1) if sec % 3 == 0 else (0, 0) for sec in range(60)]
    fired = feed(watch, seconds)
    assert fired is not None and 20 <= fired <= 30


def test_a_good_pool_resets_the_run_of_bad_seconds():
    watch = AbortWatch(threshold=0.5, window_s=3)
    assert feed(watch, [(0, 50), (0, 50), (50, 0), (0, 50), (0, 50), (50, 0)]) is None
    assert watch.bad_seconds == 0


def test_silence_before_any_answer_is_not_a_bad_second():
    watch = AbortWatch(threshold=0.5, window_s=2)
    assert feed(watch, [(0, 0)] * 5 + [(20, 0)] * 5) is None
    assert watch.bad_seconds == 0


def test_a_refused_second_is_bad_however_few_attempts_the_back_off_made():
    watch = AbortWatch(threshold=0.5, window_s=2)
    assert watch.add(0, 50, 0) is False
    assert watch.add(1, 0, 1, refused=True) is False
    assert watch.add(2, 0, 2, refused=True) is True
