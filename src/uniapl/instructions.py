"""The IFEval instruction ids the embedded world uses (names only: no checker code, no imports).

The bottom of the import graph beside ``config``: ``config`` validates ``world.type_weights`` against
``INSTRUCTION_TYPES`` and ``world`` builds prompts from them, so neither has to import the other's way up.
"""

LOWER = "change_case:english_lowercase"
NO_COMMA = "punctuation:no_comma"
END = "startend:end_checker"
TITLE = "detectable_format:title"
PS = "detectable_content:postscript"
QUOTE = "startend:quotation"
JSON = "detectable_format:json_format"
BULLETS = "detectable_format:number_bullet_lists"
WORDS = "length_constraints:number_words"
FORBID = "keywords:forbidden_words"
KEYWORD = "keywords:existence"
HIGHLIGHT = "detectable_format:number_highlighted_sections"
PARAS = "length_constraints:number_paragraphs"

INSTRUCTION_TYPES = (LOWER, NO_COMMA, END, TITLE, PS, QUOTE, JSON, BULLETS, WORDS, FORBID, KEYWORD,
                     HIGHLIGHT, PARAS)
