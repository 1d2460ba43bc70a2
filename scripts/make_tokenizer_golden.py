"""Write golden CLIP token ids, produced by open_clip 3.3.0, for lmstruct's tokenizer parity test.

The output, ``tests/data/fixtures/clip_tokenizer_golden.json``, is committed; this script is run once, by hand,
in a separate virtual environment that has open_clip (it is not a dependency of lmstruct):

    python3 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 open-clip-torch==3.3.0
    /work/peer-venv/bin/python scripts/make_tokenizer_golden.py

Each case stores the text, the context length and the ids with trailing zero padding removed.
"""

import json
import pathlib

import open_clip

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "fixtures" / "clip_tokenizer_golden.json"

SENTENCES = [
  "",
  "a photo of a cat",
  "A Photo Of A Cat.",
  "A man riding a wave on top of a surfboard.",
  "Two dogs playing with a frisbee in the park!",
  "What's that? It's a dog, isn't it? They're here; we've gone; I'm done; you'll see; he'd know.",
  "hello,world!!! ...and ??? -- ok",
  "C'est la vie; l'été est très chaud à Paris.",
  "Straße, Fußgänger und Übergröße",
  "東京タワーの写真",
  "一只猫坐在桌子上",
  "Пожалуйста, сфотографируйте кошку",
  "صورة قطة على الطاولة",
  "emoji time 😀🐱🚀 and ❤️ hearts",
  "numbers 12345 and 3.14159 and 1,000,000 and 2nd 3rd 21st",
  "phone: +1 (555) 010-9999, zip 90210",
  "The year 2023 — an em dash – en dash … ellipsis",
  "mojibake: CafÃ© and donâ€™t and â€œquotedâ€\x9d",
  "The Mona Lisa doesn&#39;t have eyebrows &amp; lashes &lt;3",
  "double escaped &amp;amp; entity &amp;lt;b&amp;gt;",
  "<b>html tags</b> stay as punctuation <br/>",
  "   leading and trailing   whitespace\t\twith\ttabs\nand\nnewlines   ",
  "non\u00a0breaking\u2009thin\u3000ideographic spaces",
  "zero\u200bwidth\u200cjoiners\u200d here",
  "ALL CAPS SHOUTING TEXT",
  "camelCaseWords and snake_case_words and kebab-case-words",
  "https://example.com/path?query=1&b=2#frag",
  "email me at someone@example.org",
  "#hashtag @mention $100 50% a*b=c ^_^ ~tilde~ `backtick` {braces} [brackets] |pipe|",
  "'quoted' \"double\" ‘curly’ “double curly” «guillemets»",
  "it’s a curly apostrophe and it's a straight one",
  "supercalifragilisticexpialidocious antidisestablishmentarianism",
  "pneumonoultramicroscopicsilicovolcanoconiosis",
  "a a a a a a a a a a a a a a a a a a a a",
  "the quick brown fox jumps over the lazy dog " * 12,
  "word " * 200,
  "x" * 300,
  "<start_of_text> a literal special token <end_of_text>",
  "<START_OF_TEXT> upper-case special token",
  "café naïve résumé coöperate",
  "Ω≈ç√∫˜µ≤≥÷ mathematical ∑∏∂∆ symbols",
  "½ ¼ ¾ fractions and ² ³ superscripts and ⅓",
  "ﬁ ligature and ﬀ and Ⅻ roman numeral",
  "full-width ＡＢＣ１２３ letters",
  "tab\x0bvertical\x0cform feed",
  "control\x01chars\x7f here",
  "a photo of a 🐶.",
  "a bad photo of the big person.",
  "itap of a dog.",
  "a cropped photo of my Persian cat",
  "Hindi: बिल्ली की तस्वीर",
  "Korean: 고양이 사진",
  "Thai: รูปแมว",
  "Greek: φωτογραφία μιας γάτας",
  "Hebrew: תמונה של חתול",
  "don'T WON'T can'T shouldN'T I'M YOU'LL HE'D WE'VE THEY'RE",
  "repeated punctuation !!!!!!!!!!!!!!!!!!!! ??????",
  "1 2 3 4 5 6 7 8 9 0",
  "3D-printed 4K TV 5G network 10x zoom",
  "A giraffe standing next to a tree in a field.",
]

CONTEXT_LENGTHS = (77, 16)


def golden_ids(text: str, context_length: int) -> list[int]:
  """open_clip's ids for ``text`` at ``context_length``, trailing padding removed."""
  ids = open_clip.tokenize([text], context_length=context_length)[0].tolist()
  while ids and ids[-1] == 0:
    ids.pop()
  return ids


def main() -> None:
  """Write the golden file."""
  cases = [
    {"text": text, "context_length": length, "ids": golden_ids(text, length)}
    for length in CONTEXT_LENGTHS
    for text in SENTENCES
  ]
  OUTPUT.parent.mkdir(parents=True, exist_ok=True)
  rows = ",\n".join(json.dumps(case, ensure_ascii=False) for case in cases)
  header = json.dumps(f"open_clip {open_clip.__version__} open_clip.tokenize")
  OUTPUT.write_text(f'{{"generator": {header},\n"cases": [\n{rows}\n]}}\n', encoding="utf-8")
  print(f"wrote {len(cases)} cases to {OUTPUT}")


if __name__ == "__main__":
  main()
