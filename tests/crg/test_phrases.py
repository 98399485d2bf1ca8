import pytest

from vcontrast.crg.phrases import extract_noun_phrases


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What colour is the cup left of the red plate?", ["cup", "red plate"]),
        ("Is there a dog on the sofa?", ["dog", "sofa"]),
        ("A man riding a horse on the beach.", ["man", "horse", "beach"]),
        ("How many apples are in the bowl?", ["apples", "bowl"]),
        ("the blue ball and the green cube", ["blue ball", "green cube"]),
        ("Which is bigger, the cat or the dog?", ["cat", "dog"]),
        ("Is the cup bigger than the plate?", ["cup", "plate"]),
        ("Does this image match: a red circle above a blue square?", ["red circle", "blue square"]),
        ("Two dogs sleeping under a wooden table.", ["dogs", "wooden table"]),
        ("What is written on the sign?", ["sign"]),
        ("Is the red square to the left of the blue circle?", ["red square", "blue circle"]),
        ("What's on the 3 plates?", ["plates"]),
        ("Isn't that the man's T-shirt?", ["man's t-shirt"]),
        ("What is the woman holding?", ["woman"]),
        ("The cat is sitting next to a laptop computer", ["cat", "laptop computer"]),
        ("Where is the yellow triangle in the image?", ["yellow triangle"]),
    ],
)
def test_extract_noun_phrases(text, expected):
    assert extract_noun_phrases(text) == expected


def test_accented_letters_stay_in_words():
    assert extract_noun_phrases("Is there a café sign?") == ["café sign"]
    assert extract_noun_phrases("A jalapeño pizza on a plate") == ["jalapeño pizza", "plate"]
    assert extract_noun_phrases("Is the naïve man's T-shirt blue?") == ["naïve man's t-shirt blue"]
    assert extract_noun_phrases("A jalapen\u0303o pizza") == ["jalapeño pizza"]  # decomposed "ñ" (NFD)


def test_no_phrases():
    assert extract_noun_phrases("") == []
    assert extract_noun_phrases("What is it?") == []
    assert extract_noun_phrases("?!") == []


def test_duplicates_removed_in_order():
    assert extract_noun_phrases("The Cup. the cup! A plate, a cup.") == ["cup", "plate"]


def test_curly_apostrophe():
    assert extract_noun_phrases("Isn’t it the man’s hat?") == ["man's hat"]


def test_documented_limits():
    # An unlisted verb stays in its phrase; a listed word that is a noun here is lost.
    assert extract_noun_phrases("a dog herding sheep") == ["dog herding sheep"]
    assert extract_noun_phrases("the colour chart") == ["chart"]


def test_max_phrases():
    assert extract_noun_phrases("a cat, a dog and a bird", max_phrases=2) == ["cat", "dog"]


@pytest.mark.parametrize("max_phrases", [0, -1, 1.5, True])
def test_bad_max_phrases(max_phrases):
    with pytest.raises(ValueError, match="max_phrases"):
        extract_noun_phrases("a cat", max_phrases=max_phrases)


def test_bad_text():
    with pytest.raises(TypeError, match="text"):
        extract_noun_phrases(["a cat"])
