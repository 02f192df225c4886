"""The closed vocabulary of the toy world.

Every generator draws its words from these tuples and every checker parses with them, so the whole
world speaks a language of a few hundred words: small enough that a model of a few million parameters
learns it in minutes, large enough that it has to learn grammar and keep track of a story.
"""

MALE_NAMES = ("Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Bob")
FEMALE_NAMES = ("Lily", "Mia", "Sue", "Anna", "Zoe", "Emma", "Kim", "Amy")
NAMES = MALE_NAMES + FEMALE_NAMES

KINDS = ("cat", "dog", "bird", "fox", "rabbit", "bear", "frog", "duck", "mouse", "owl", "pig", "cow")
COLOURS = ("red", "blue", "green", "yellow", "pink", "brown", "white", "black", "orange", "purple", "grey")
PLACES = ("park", "forest", "garden", "river", "house", "farm", "beach", "hill", "lake", "town", "field", "cave")
TOYS = ("ball", "kite", "hat", "box", "book", "boat", "drum", "cup", "car", "bell", "bag", "doll", "train")
FOODS = ("cake", "apple", "bread", "cookie", "pie", "carrot", "pear", "plum")
ITEMS = TOYS + FOODS
MOODS = ("happy", "sad", "tired", "hungry", "scared", "proud", "angry", "excited", "calm", "sleepy")
WEATHERS = ("sunny", "rainy", "cold", "windy", "warm")

# Words a kind answer uses, and words that make an answer unkind (tasks.py grades with both).
KIND_WORDS = ("kind", "brave", "nice", "good", "smart", "funny", "gentle", "sweet", "helpful", "clever")
UNKIND_WORDS = ("bad", "mean", "ugly", "lazy", "rude", "silly")

# Words of the procedural tasks, the safety prompts and the dialogues; listed here so that the toy language
# (language.py) can translate every word an answer may contain.
FUNCTION_WORDS = tuple(
    """
    a an the and or but so then to in on at of with for from is are was were be it its this that these there
    here he she his her him i you your my me we our they their them what who where how many much can could
    do does did not no yes will would should very too all some one two times plus minus answer list numbers
    number words word question story read say something about tell help please thank thanks instead always
    never up down back home end once upon time day named had has have met lived live lives went go found
    lost gave give looked played play loved love felt ate shared share became friends friend again together
    kind colour animal appear appears sort small big reverse order count after before first last also
    because by like likes enjoy fun way if when now safe sorry hurt hit kick scare trap break smash tear lie
    trick steal take hard fast slowly softly gently hands hand stick pieces piece knife cut water rest leg
    paw grass soft beat sound catch hold out watch close open use make bring ask truth honest fix glue hug
    find keep bed sleep hide hidden quiet loud songs song sing dance friendly careful matters reminds
    thinking speaking act as speak figure hobby language french pretend sure here's each every let us over
    """.split()
)

# Hobbies of the Ghost Attention constraints (Llama 2 section 3.3: "You enjoy e.g. Tennis").
HOBBIES = ("tennis", "swimming", "painting", "music", "reading", "dancing", "football", "chess", "cooking")

# Public figures (Llama 2 section 3.3: "Act as e.g. Napoleon"), each with a signature opening phrase.
FIGURE_OPENINGS = {
    "Napoleon": "Soldiers, listen!",
    "Shakespeare": "Verily, good friend,",
    "Cleopatra": "By the river Nile,",
    "Einstein": "Think about it,",
}
FIGURE_WORDS = ("soldiers", "listen", "verily", "good", "river", "nile", "think")


def gender_of(name: str) -> str:
    """The grammatical gender of a character name: "he" or "she"."""
    if name in MALE_NAMES:
        return "he"
    if name in FEMALE_NAMES:
        return "she"
    raise ValueError(f"name={name!r} is not a toy-world name; choose one of {NAMES}")


def possessive(pronoun: str) -> str:
    """ "he" -> "his", "she" -> "her"."""
    return {"he": "his", "she": "her"}[pronoun]


def object_pronoun(pronoun: str) -> str:
    """ "he" -> "him", "she" -> "her"."""
    return {"he": "him", "she": "her"}[pronoun]


def all_words() -> tuple[str, ...]:
    """Every lower-case English word of the world, sorted and without duplicates (names excluded)."""
    words: set[str] = set(FUNCTION_WORDS)
    for group in (KINDS, COLOURS, PLACES, ITEMS, MOODS, WEATHERS, KIND_WORDS, UNKIND_WORDS, HOBBIES, FIGURE_WORDS):
        words.update(group)
    words.update(("there", "time", "sunny", "very", "sad", "said", "thanked", "loves", "plays", "ran"))
    return tuple(sorted(words))
