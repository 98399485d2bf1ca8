"""Noun phrases from a prompt, by a light rule-based chunker with no NLP dependency.

CRG needs regions for prompts that come without any: an open-vocabulary detector is asked for the things the prompt
names ("What colour is the cup left of the red plate?" -> `["cup", "red plate"]`). Detectors such as GroundingDINO
and OWLv2 only need short nominal chunks, so a part-of-speech tagger is not worth a heavy dependency (spaCy needs a
downloaded model; NLTK needs its tagger data): a closed-class stop list does most of the work.

The method:

1. Lower-case the text and split it into words (Unicode letters and digits, so `"café"` is one word, with inner
   apostrophes and hyphens kept, so `"man's"` and `"t-shirt"` are one word too). Any other character (punctuation)
   ends a phrase.
2. Words of a closed class end a phrase and are dropped: auxiliaries, pronouns, prepositions, conjunctions,
   wh-words, spatial relation words (`left`, `right`, `top`, ...), common comparatives and superlatives (`bigger`,
   `tallest`, ...), adverbs and negation, about 150 common verbs in
   all their forms (`holding`, `sits`, `written`, ...), and "meta" nouns that name an attribute or the image
   itself rather than a thing in it (`colour`, `shape`, `image`, `picture`, ...). A word just before `than` (a
   comparative: `bigger than`) is dropped too.
3. Determiners and quantifiers (`the`, `a`, `this`, `two`, `3`, `several`, ...) start a new phrase and are
   dropped, so that "a cat a dog" gives two phrases.
4. Every remaining run of words is a phrase; duplicates are removed, first occurrence first.

Limits, by design of a stop list rather than a tagger: an open-class verb that is not on the list stays in its
phrase (`"a dog chasing a ball"` -> `["dog", "ball"]` because `chasing` is listed, but `"a dog herding sheep"` ->
`["dog herding sheep"]`); a noun that is also a listed word is lost (`"a spinning top"` -> `["spinning"]`,
`"the colour chart"` -> `["chart"]`); relative clauses and coordination inside a phrase are split (`"salt and
pepper shakers"` -> `["salt", "pepper shakers"]`); English only. Pass the phrases yourself where this matters.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["extract_noun_phrases"]


def _words(text: str) -> frozenset[str]:
    # Word lists below are whitespace-separated blocks: long closed classes read better as prose than as literals.
    return frozenset(text.split())


# Determiners and quantifiers: start a new phrase and are stripped from it.
_DETERMINERS = _words(
    """
    a an the this that these those some any each every all both either neither another other no my your his her its
    our their whose one two three four five six seven eight nine ten eleven twelve several many few much more most
    less least enough such
    """
)

# Closed classes that end a phrase and are dropped.
_STOP_WORDS = _words(
    """
    is are was were be been being am do does did done has have had having can could will would shall should may might
    must ought i you he she it we they me him us them mine yours hers ours theirs itself myself yourself himself
    herself themselves ourselves something anything nothing everything someone anyone everyone nobody somebody
    there here what which who whom why how when where whether if then than as so because while although though
    and or but nor yet not n't never also only just very really too quite rather almost even still please yes
    about above across after against along alongside amid among around at atop before behind below beneath beside
    besides between beyond by down during except for from in inside into like near nearby next of off on onto
    opposite out outside over past per since through throughout till to toward towards under underneath unlike until
    up upon via with within without
    left right top bottom front back middle center centre centered side sides corner far close closer closest
    farther further furthest nearest leftmost rightmost topmost upper lower
    same different true false correct incorrect
    bigger biggest smaller smallest larger largest taller tallest shorter shortest longer longest wider widest higher
    highest heavier heaviest older oldest younger youngest darker darkest brighter brightest
    """
)

# Words that name an attribute asked about, or the image itself, rather than a thing to detect.
_META_NOUNS = _words(
    """
    colour colours color colors shape shapes size sizes material materials texture pattern type types kind kinds sort
    number numbers amount count name names position positions location direction orientation
    image images picture pictures photo photos photograph photographs scene scenes view frame
    question answer option options caption statement description word words text
    """
)

# Common verbs of VQA prompts and captions: base, third person, past, past participle and -ing forms.
_VERB_FORMS = """
see sees saw seen seeing | show shows showed shown showing | look looks looked looking | appear appears appeared
appearing | seem seems seemed seeming | hold holds held holding | wear wears wore worn wearing | sit sits sat sitting
| stand stands stood standing | lie lies lay lain lying | lay lays laid laying | ride rides rode ridden riding |
eat eats ate eaten eating | drink drinks drank drunk drinking | play plays played playing | walk walks walked walking
| run runs ran running | fly flies flew flown flying | carry carries carried carrying | use uses used using |
contain contains contained containing | touch touches touched touching | face faces faced facing | match matches
matched matching | write writes wrote written writing | read reads reading | say says said saying | mean means meant
meaning | describe describes described describing | tell tells told telling | make makes made making | put puts
putting | place places placed placing | locate locates located locating | cover covers covered covering | fill fills
filled filling | sleep sleeps slept sleeping | rest rests rested resting | park parks parked parking | hang hangs hung
hanging | lean leans leaned leant leaning | point points pointed pointing | watch watches watched watching | throw
throws threw thrown throwing | catch catches caught catching | kick kicks kicked kicking | cut cuts cutting | open
opens opened opening | close closes closed closing | move moves moved moving | go goes went gone going | come comes
came coming | get gets got gotten getting | take takes took taken taking | give gives gave given giving | keep keeps
kept keeping | need needs needed needing | want wants wanted wanting | chase chases chased chasing | pull pulls pulled
pulling | push pushes pushed pushing | jump jumps jumped jumping | swim swims swam swum swimming | drive drives drove
driven driving | cross crosses crossed crossing | grab grabs grabbed grabbing | wait waits waited waiting | talk
talks talked talking | smile smiles smiled smiling | laugh laughs laughed laughing | cook cooks cooked cooking | stack
stacks stacked stacking | lift lifts lifted lifting | sell sells sold selling | buy buys bought buying | paint paints
painted | draw draws drew drawn | display displays displayed displaying | depict depicts depicted depicting | surround
surrounds surrounded surrounding | support supports supported supporting | attach attaches attached attaching |
connect connects connected connecting | include includes included including | belong belongs belonged belonging |
happen happens happened happening | remain remains remained remaining | become becomes became becoming | feel feels
felt feeling | think thinks thought thinking | know knows knew known knowing | count counts counted counting | find
finds found finding | identify identifies identified identifying | choose chooses chose chosen choosing | select
selects selected selecting | pick picks picked picking | answer answers answered answering | consider considers
considered considering | compare compares compared comparing | depicted pictured shaped colored coloured
"""
_VERBS = _words(_VERB_FORMS.replace("|", " "))

_BREAK_WORDS = _STOP_WORDS | _META_NOUNS | _VERBS
# Words are runs of Unicode letters and digits (`[^\W_]`), so "café" and "jalapeño" stay whole.
_WORD_OR_PUNCT = re.compile(r"[^\W_]+(?:['-][^\W_]+)*|[^\s\w]|_")
_IS_WORD = re.compile(r"[^\W_]")
_IS_NUMBER = re.compile(r"\d+(?:[.,]\d+)?(?:st|nd|rd|th)?")


def _is_contraction(word: str) -> bool:
    # "isn't", "it's", "what's", "that's": a closed-class word glued to a clitic; "man's" (a possessive) is not one.
    head, apostrophe, _ = word.partition("'")
    return bool(apostrophe) and (word.endswith("n't") or head in _BREAK_WORDS or head in _DETERMINERS or head == "let")


def extract_noun_phrases(text: str, max_phrases: int | None = None) -> list[str]:
    """
    Extract the noun phrases of a prompt with a light, dependency-free chunker (see the module docstring for the
    method and its limits).

    Leading determiners and quantifiers are stripped and the result is lower-cased, which is the form GroundingDINO
    expects; duplicates are removed, keeping the order of first occurrence.

    Args:
        text (`str`):
            The prompt, a question or a caption.
        max_phrases (`int`, *optional*):
            Keep at most this many phrases (the first ones). `None` keeps all.

    Returns:
        `list[str]`: the phrases, possibly empty.

    Examples:

    ```python
    >>> extract_noun_phrases("What colour is the cup left of the red plate?")
    ['cup', 'red plate']
    >>> extract_noun_phrases("Two dogs sleeping under a wooden table.")
    ['dogs', 'wooden table']
    ```
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` (={text!r}) has to be a string")
    if max_phrases is not None and (
        isinstance(max_phrases, bool) or not isinstance(max_phrases, int) or max_phrases < 1
    ):
        raise ValueError(f"`max_phrases` (={max_phrases!r}) has to be a positive integer or None")

    # NFC first: a decomposed "ñ" (n + combining tilde) would otherwise split the word.
    tokens = _WORD_OR_PUNCT.findall(unicodedata.normalize("NFC", text).lower().replace("’", "'"))
    phrases: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            phrase = " ".join(current)
            if phrase not in phrases:
                phrases.append(phrase)
            current.clear()

    for i, token in enumerate(tokens):
        next_token = tokens[i + 1] if i + 1 < len(tokens) else None
        if not _IS_WORD.match(token):  # punctuation ends a phrase
            flush()
        elif token in _BREAK_WORDS or next_token == "than" or _is_contraction(token):
            flush()  # closed class, a comparative ("bigger than") or "isn't", "it's", "there's"
        elif token in _DETERMINERS or _IS_NUMBER.fullmatch(token):  # starts a phrase, is stripped
            flush()
        else:
            current.append(token)
    flush()
    return phrases if max_phrases is None else phrases[:max_phrases]
