"""The vocabulary of the TTS sentences (models/data/tts.py): common English words by grammatical role.

Within each role, every fifth word (positions 4, 9, 14, ...) is held out: held-out clips speak only those,
training clips never do. Roles keep the sentences grammatical; verbs are in the past tense, so every
subject agrees with every verb. A word appears in one role only (checked at import).
"""

_ROLES = {
    "det": "the this that my your our his her their every some each one no any",
    "subj": """I you we they she he Anna Ben Carla David Emma Frank Grace Henry Iris Jack Kate Leo Maria
        Nick Olivia Peter Rosa Sam Tom Vera Bob Mike Lucy Paul""",
    "adj": """big small red blue green yellow purple old young happy sad quiet loud bright dark warm cold
        soft hard fast slow tall short heavy empty full clean dirty funny strange famous gentle lucky busy
        lazy brave clever tiny huge round sweet bitter fresh rich poor golden silver wooden broken shiny
        noisy friendly careful""",
    "noun": """dog cat house car tree book river city garden window table chair door road child mother
        father friend teacher doctor farmer bird fish horse apple bread water coffee letter phone paper
        picture song story game ball boat train bridge mountain island forest field flower stone hat coat
        shoe bag box key map clock lamp bottle cup plate spoon knife bed room kitchen office school market
        shop park beach lake sky moon sun star cloud snow rain wind fire music money ticket camera
        computer kitten puppy baby king queen pilot sailor baker painter neighbor bicycle rocket robot
        pencil blanket pillow mirror candle basket button engine ladder guitar piano drum violin cookie
        cake pizza banana orange lemon potato tomato carrot cheese butter honey sugar soup egg""",
    "verb": """saw found made took gave brought bought sold painted opened closed moved pushed pulled
        carried watched liked loved wanted needed cleaned washed fixed built broke lost kept held caught
        threw kicked visited followed called helped showed drew wrote chose hid touched dropped lifted
        baked cooked remembered forgot borrowed shared counted checked noticed carved""",
    "adv": """today yesterday again slowly quickly quietly happily carefully early late twice once later
        tonight there here outside together alone anyway instead gladly badly loudly""",
    "prep": """near behind under over beside from with without across along around past through above below
        into onto toward""",
    "conj": "and but so then yet while",
}

ROLES: dict[str, tuple[str, ...]] = {role: tuple(text.split()) for role, text in _ROLES.items()}


def split_words(heldout: bool) -> dict[str, tuple[str, ...]]:
    """The words of each role in one split: every fifth word of a role is held out."""
    return {role: tuple(w for i, w in enumerate(words) if (i % 5 == 4) == heldout) for role, words in ROLES.items()}


_ALL = [w.lower() for words in ROLES.values() for w in words]
assert len(_ALL) == len(set(_ALL)), "a word is listed in two roles: the held-out rule needs each word once"
