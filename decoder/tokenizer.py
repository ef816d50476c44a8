"""Whisper's tokenizer on `tokenizers`: text tokens plus the special tokens decoding needs.

Special tokens come from tokenizer.json's added tokens; timestamp tokens are the
ids after <|notimestamps|> (0.00 s, 0.02 s, ... 30.00 s), whether or not the file lists them.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

from kernels.errors import AmanuensisError, BadOption
from kernels.frontend import TIME_PRECISION

LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}
# Other names openai-whisper accepts for a language.
LANGUAGE_ALIASES = {
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}
_BY_NAME = {**{name: code for code, name in LANGUAGES.items()}, **LANGUAGE_ALIASES}
# The tokenizer spells Hebrew and Javanese the old way.
_TOKEN_CODE = {"he": "iw", "jw": "jw"}


def language_code(value: str) -> str | None:
    """The code of a language given by its code or its name, in any case (EN, en, English -> en), as
    openai-whisper accepts them; None for one Whisper does not know."""
    key = str(value).strip().lower()
    return key if key in LANGUAGES else _BY_NAME.get(key)


class WhisperTokenizer:
    """Encode/decode text and name Whisper's special token ids."""

    def __init__(self, path: Path, multilingual: bool):
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exceptions for bad files
            raise AmanuensisError(f"{path}: unreadable tokenizer ({e})") from None
        self.multilingual = multilingual
        self.special = {t.content: t_id for t_id, t in self._tok.get_added_tokens_decoder().items()}
        for name in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
            if name not in self.special:
                raise AmanuensisError(f"{path}: special token {name} is missing")

    def _id(self, name: str) -> int | None:
        return self.special.get(name)

    eot = property(lambda self: self.special["<|endoftext|>"])
    sot = property(lambda self: self.special["<|startoftranscript|>"])
    no_timestamps = property(lambda self: self.special["<|notimestamps|>"])
    timestamp_begin = property(lambda self: self.special["<|notimestamps|>"] + 1)
    transcribe = property(lambda self: self._id("<|transcribe|>"))
    translate = property(lambda self: self._id("<|translate|>"))
    sot_prev = property(lambda self: self._id("<|startofprev|>"))
    sot_lm = property(lambda self: self._id("<|startoflm|>"))
    no_speech = property(lambda self: self._id("<|nospeech|>") or self._id("<|nocaptions|>"))

    def language_token(self, code: str) -> int:
        token = self._id(f"<|{_TOKEN_CODE.get(code, code)}|>")
        if token is None:
            raise BadOption("language", f"unknown language {code!r} for this model")
        return token

    def check_language(self, language: str) -> str:
        """The code of `language` (a code or a name, any case) if this model knows it; BadOption otherwise."""
        code = language_code(language)
        if not self.multilingual:
            if code != "en":
                raise BadOption("language", f"language {language!r}: this model is English-only")
            return code
        if code is None:
            raise BadOption("language", f"unknown language {language!r} for this model")
        self.language_token(code)
        return code

    @cached_property
    def language_tokens(self) -> dict[str, int]:
        """{language code: token id} for every language this tokenizer has."""
        out = {}
        for code in LANGUAGES:
            token = self._id(f"<|{_TOKEN_CODE.get(code, code)}|>")
            if token is not None:
                out[code] = token
        return out

    def sot_sequence(self, language: str | None, task: str) -> list[int]:
        """<|startoftranscript|> [<|lang|> <|task|>] as the model expects it."""
        seq = [self.sot]
        if self.multilingual:
            if language is not None:
                seq.append(self.language_token(language))
            seq.append(self.translate if task == "translate" else self.transcribe)
        return seq

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of the text tokens in `ids` (special and timestamp tokens dropped)."""
        return self._tok.decode([int(i) for i in ids if i < self.eot], skip_special_tokens=True)

    def decode_with_timestamps(self, ids) -> str:
        out, text = [], []
        for i in ids:
            if i >= self.timestamp_begin:
                out.append(self._tok.decode(text))
                text = []
                out.append(f"<|{(i - self.timestamp_begin) * TIME_PRECISION:.2f}|>")
            elif i < self.eot:
                text.append(int(i))
        out.append(self._tok.decode(text))
        return "".join(out)

    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """Tokens of symbols that are not speech (openai/whisper's list), suppressed when asked."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return sorted(result)

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Group text tokens into words (space-delimited; punctuation stays attached)."""
        words, word_tokens, current = [], [], []
        for token in tokens:
            current.append(token)
            text = self._tok.decode(current)
            if "\ufffd" in text:                 # an incomplete UTF-8 sequence: keep accumulating
                continue
            if words and not text.startswith(" "):
                words[-1] += text
                word_tokens[-1].extend(current)
            else:
                words.append(text)
                word_tokens.append(list(current))
            current = []
        return words, word_tokens
