"""Options defined once: the temperature ladder, language names, and the Python API's keyword arguments."""
import math

import pytest

from decoder.options import DecodingOptions, TranscribeOptions, temperature_ladder, with_changes
from decoder.tokenizer import language_code
from kernels.errors import BadOption


def test_language_codes_and_names():
    assert [language_code(v) for v in ("en", "EN", "English", " german ", "Castilian", "mandarin", "HAW")] == \
        ["en", "en", "en", "de", "es", "zh", "haw"]
    assert language_code("xx") is None and language_code("klingon") is None


def test_temperature_ladder():
    assert temperature_ladder() == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperature_ladder(0.3) == (0.3, 0.5, 0.7, 0.9) and temperature_ladder(0.5, 0) == (0.5,)
    assert temperature_ladder(1.0) == (1.0,)
    for bad in (-1.0, 5.0, math.nan, math.inf):
        with pytest.raises(BadOption, match="temperature must be a number from 0 to 1") as e:
            temperature_ladder(bad)
        assert e.value.option == "temperature"
    with pytest.raises(BadOption, match="increment"):
        temperature_ladder(0.0, -0.2)


def test_transcribe_keyword_arguments_reach_their_options():
    options = with_changes(TranscribeOptions(), language="de", beam_size=3, word_timestamps=True, temperature=0.4)
    assert options.decoding == DecodingOptions(language="de", beam_size=3)
    assert options.word_timestamps and options.temperatures == (0.4,)
    assert with_changes(TranscribeOptions(), temperature=[0.0, 0.5]).temperatures == (0.0, 0.5)
    for bad in ({"beam_sizes": 3}, {"prompt": (1, 2)}, {"decoding": None}):
        with pytest.raises(TypeError, match="unknown transcription option"):
            with_changes(TranscribeOptions(), **bad)
    with pytest.raises(BadOption, match="beam_size must be a whole number of at least 1") as e:
        with_changes(TranscribeOptions(), beam_size=0)
    assert e.value.option == "beam_size"
    with pytest.raises(BadOption, match="temperatures must be numbers of at least 0"):
        TranscribeOptions(temperatures=())
