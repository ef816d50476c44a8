"""One spelling per English word for scoring: British spellings become American ("harbour" ->
"harbor", "metres" -> "meters", "travelled" -> "traveled") and titles are written out ("dr" ->
"doctor"), as Whisper's English normaliser does.

Both sides of a word error rate go through this (decoder/normalize.py), so a reference in British
spelling does not count "harbor" as an error (and the live path, which compares words through
normalize, takes the two spellings as one word). The table holds stems in families that change alike,
and each family lists the endings its words take; a British form maps only when it is a listed stem
with a listed ending, so words that merely look alike ("four", "your", "emphasis") stay as they are.
"""
from __future__ import annotations

# -our -> -or: harbour, harbours, harboured, colourful, favourite, neighbourhood
_OUR = ("arbour ardour armour behaviour candour clamour colour demeanour dishonour endeavour favour "
        "fervour flavour glamour harbour honour humour labour misbehaviour neighbour odour parlour "
        "rancour rigour rumour saviour savour splendour succour tumour valour vapour vigour").split()
_OUR_ENDINGS = ("", "s", "ed", "ing", "ful", "fully", "able", "ably", "er", "ers", "ite", "ites", "hood",
                "hoods", "less", "ly", "ous", "ings")

# -re -> -er: metre, metres, centred, theatres
_RE = ("calibre centimetre centre fibre kilometre litre lustre meagre metre millimetre mitre ochre "
       "reconnoitre sabre sceptre sepulchre sombre spectre theatre").split()
_RE_ENDINGS = {"re": "er", "res": "ers", "red": "ered", "ring": "ering"}

# -ise -> -ize in every form: organise, organised, organisation, organiser
_ISE = ("agonis apologis authoris baptis capitalis categoris centralis characteris civilis colonis "
        "criticis customis economis emphasis energis equalis familiaris fertilis finalis fossilis "
        "generalis globalis harmonis hospitalis humanis hypothesis idealis immunis industrialis itemis "
        "legalis localis maximis memoris minimis mobilis modernis monopolis neutralis normalis optimis "
        "organis patronis prioritis publicis realis recognis specialis stabilis standardis summaris "
        "sympathis synchronis theoris utilis visualis").split()
_ISE_ENDINGS = ("e", "es", "ed", "ing", "er", "ers", "ation", "ations", "able")
# -yse -> -yze, but not "analyses": the plural of "analysis" in both spellings
_YSE = "analys catalys paralys".split()
_YSE_ENDINGS = ("e", "ed", "ing", "er", "ers")

# a doubled l before an ending: travelled, travelling, traveller, counselled, councillor
_LL = ("cancel channel counsel dial duel enamel equal fuel funnel grovel jewel label level libel "
       "marshal marvel model panel pedal quarrel rival shovel signal snorkel total travel tunnel "
       "yodel").split()
_LL_ENDINGS = {"led": "ed", "ling": "ing", "ler": "er", "lers": "ers", "lings": "ings"}

# one word at a time
_WORDS = {
    "aeroplane": "airplane", "aeroplanes": "airplanes", "ageing": "aging", "aluminium": "aluminum",
    "anaesthetic": "anesthetic", "analogue": "analog", "catalogue": "catalog", "catalogues": "catalogs",
    "cheque": "check", "cheques": "checks", "cosy": "cozy", "councillor": "councilor",
    "councillors": "councilors", "counsellor": "counselor", "counsellors": "counselors",
    "defence": "defense", "defences": "defenses", "encyclopaedia": "encyclopedia", "enrol": "enroll",
    "enrolment": "enrollment", "fulfil": "fulfill", "fulfilment": "fulfillment", "gaol": "jail",
    "grey": "gray", "greyer": "grayer", "greys": "grays", "instalment": "installment",
    "jewellery": "jewelry", "judgement": "judgment", "judgements": "judgments", "kerb": "curb",
    "licence": "license", "licences": "licenses", "manoeuvre": "maneuver", "manoeuvres": "maneuvers",
    "marvellous": "marvelous", "mould": "mold", "mouldy": "moldy", "moustache": "mustache",
    "offence": "offense", "offences": "offenses", "paediatric": "pediatric", "plough": "plow",
    "ploughed": "plowed", "practise": "practice", "practised": "practiced", "practises": "practices",
    "practising": "practicing", "pretence": "pretense", "programme": "program",
    "programmes": "programs", "pyjamas": "pajamas", "sceptic": "skeptic", "sceptical": "skeptical",
    "skilful": "skillful", "smoulder": "smolder", "smouldering": "smoldering", "storey": "story",
    "storeys": "stories", "tyre": "tire", "tyres": "tires", "wilful": "willful",
    # titles, written out
    "dr": "doctor", "mr": "mister", "mrs": "missus", "prof": "professor", "jr": "junior",
}


def _table() -> dict[str, str]:
    table: dict[str, str] = {}
    for stem in _OUR:
        table.update({stem + e: stem[:-2] + "r" + e for e in _OUR_ENDINGS})
    for stem in _RE:
        table.update({stem[:-2] + b: stem[:-2] + a for b, a in _RE_ENDINGS.items()})
    for stems, endings in ((_ISE, _ISE_ENDINGS), (_YSE, _YSE_ENDINGS)):
        for stem in stems:
            table.update({stem[:-1] + "s" + e: stem[:-1] + "z" + e for e in endings})
    for stem in _LL:
        table.update({stem + b: stem + a for b, a in _LL_ENDINGS.items()})
    table.update(_WORDS)
    return table


AMERICAN = _table()


def american(word: str) -> str:
    """`word` (lower case, as normalize leaves it) in its American spelling; a possessive keeps its 's."""
    if word.endswith("'s"):
        return AMERICAN.get(word[:-2], word[:-2]) + "'s"
    return AMERICAN.get(word, word)
