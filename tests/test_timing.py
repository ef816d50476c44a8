"""Word timestamps: DTW against a plain reference, and alignment on audio with a known offset."""
import numpy as np
import pytest
import soundfile

from decoder.options import TranscribeOptions
from decoder.timing import dtw, median_filter
from tests.test_transcribe import HELLO


def dtw_reference(cost):
    """The textbook O(N·M) recurrence with the same tie order (diagonal, up, left)."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        best = np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]])
        i, j = [(i - 1, j - 1), (i - 1, j), (i, j - 1)][best]
    return np.array(path[::-1]).T


@pytest.mark.parametrize("n, m", [(1, 1), (3, 9), (9, 3), (17, 60)])
def test_dtw_matches_reference(n, m):
    cost = np.random.default_rng(n * m).random((n, m))
    rows, cols = dtw(cost)
    np.testing.assert_array_equal(np.stack([rows, cols]), dtw_reference(cost))
    assert rows[0] == cols[0] == 0 and rows[-1] == n - 1 and cols[-1] == m - 1


def test_median_filter():
    x = np.array([[0.0, 0, 9, 0, 0, 5, 5, 5]])
    np.testing.assert_array_equal(median_filter(x, 3), [[0, 0, 0, 0, 0, 5, 5, 5]])


def test_words_land_where_the_speech_is(tiny, tmp_path):
    """The clip after 5 s of silence: the first word starts near 5 s, words in order, inside segments."""
    speech, rate = soundfile.read(str(HELLO), dtype="float32")
    shifted = np.concatenate([np.zeros(5 * rate, np.float32), speech])
    path = tmp_path / "late.wav"
    soundfile.write(str(path), shifted, rate)
    result = tiny.transcribe(path, TranscribeOptions(word_timestamps=True))
    words = result.words
    assert "".join(w.word for w in words) == result.text
    assert abs(words[0].start - 5.0) < 0.6, words[0]
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.start <= w.end for w in words)
    assert words[-1].end <= len(shifted) / rate + 0.1
    for seg in result.segments:
        assert all(seg.start <= w.start <= w.end <= seg.end for w in seg.words)
    dog = next(w for w in words if "dog" in w.word)
    assert 5.0 + 2.0 < dog.end < 5.0 + 6.0            # "lazy dog." ends mid-clip, not at an edge
    assert all(0.0 <= w.probability <= 1.0 for w in words)
