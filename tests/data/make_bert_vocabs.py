"""Writes tests/data/bert_uncased_vocab.txt and tests/data/bert_cased_vocab.txt (run from anywhere).

Both are laid out like the published BERT vocabularies, only shorter: ``[PAD]`` = 0, ``[unused0]`` ..
``[unused98]`` = 1..99, ``[UNK] [CLS] [SEP] [MASK]`` = 100..103, ``[unused99]`` .. ``[unused993]``
= 104..998, then single characters, then their ``##`` continuation forms, then whole words and
suffix pieces. Every printable ASCII character and its ``##`` form is present, so any ASCII word
splits into pieces instead of falling back to [UNK] (a comparison with HF tokenizers then compares
real pieces).

The uncased one has what the uncased BERT vocabulary has: lower-case entries only, accents stripped,
and symbols that ``str.isupper()`` calls upper case but that have no lower-case form (``ℝ``, ``ℂ``,
``ℕ``, ``ℤ`` and ``##ℝ``), which a single-character casing test mistakes for a cased vocabulary.
The cased one keeps upper-case letters, capitalised words and accented letters.
"""
import os
import string

HERE = os.path.dirname(os.path.abspath(__file__))

SPECIALS = (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            + [f"[unused{i}]" for i in range(99, 994)])
PUNCTUATION_AND_DIGITS = list(string.punctuation) + list(string.digits)
LOWER = list(string.ascii_lowercase)
UPPER = list(string.ascii_uppercase)
UNCASED_SYMBOLS = ["¡", "£", "§", "°", "±", "²", "·", "×", "ß", "ø", "α", "β", "γ", "λ", "π", "σ", "а", "б",
                   "в", "к", "東", "京", "ℓ", "™", "→", "ℂ", "ℕ", "ℝ", "ℤ", "∈", "≤"]
CASED_SYMBOLS = ["¡", "£", "§", "°", "±", "²", "·", "×", "ß", "é", "è", "ï", "ü", "ö", "ç", "É", "Ü", "α", "β",
                 "Σ", "Ω", "а", "б", "Б", "東", "京", "ℓ", "™", "→", "ℝ", "∈", "≤"]
WORDS = """the of and to in a is that for it as was with be by on not he this are or his from at which but
have an they you were her she there been one all we their has would when if so no will can more about
said up out time only them what some could into two other then new first also after any like these year
how because people over most may such where through should those between under used each many before
must called value return name function object list string file module class error exception raised
attempt evaluate bound hello world cat sat mat paris capital france germany city river table python
number default argument arguments given type none true false data text line lines format character
characters mode open read write path directory path use using see note instance method methods attribute
set get key keys values dict items item index sequence iterator call calls called cafe naive uber over
standard option options optional parser parse result results test tests""".split()
CAPITALISED = ["The", "Hello", "World", "Paris", "France", "Germany", "Python", "Return", "If", "This", "It",
               "In", "A", "An", "None", "True", "False", "Name", "Error", "Exception", "Café", "Über", "I"]
SUFFIXES = ["##s", "##ed", "##ing", "##ly", "##er", "##es", "##ion", "##al", "##ity", "##ment", "##ness"]


def unique(tokens):
    """``tokens`` in order, each once (single-letter words such as ``a`` are also characters)."""
    return list(dict.fromkeys(tokens))


def continuation(pieces):
    return ["##" + piece for piece in pieces]


def uncased_vocab():
    chars = PUNCTUATION_AND_DIGITS + LOWER + UNCASED_SYMBOLS
    return unique(SPECIALS + chars + continuation(chars) + WORDS + SUFFIXES)


def cased_vocab():
    chars = PUNCTUATION_AND_DIGITS + UPPER + LOWER + CASED_SYMBOLS
    return unique(SPECIALS + chars + continuation(chars) + WORDS + CAPITALISED + SUFFIXES)


def write(name, tokens):
    with open(os.path.join(HERE, name), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(token + "\n" for token in tokens))


if __name__ == "__main__":
    write("bert_uncased_vocab.txt", uncased_vocab())
    write("bert_cased_vocab.txt", cased_vocab())
