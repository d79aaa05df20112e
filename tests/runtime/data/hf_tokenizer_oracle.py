"""The oracle of hf_tokenizer_test: Hugging Face's `tokenizers` library (Rust) trains small
tokenizers offline, in the shapes of the model families fjord reads, and records what it makes
of each test text.

    hf_tokenizer_oracle.py OUT_DIR [GPT2_DIR TEXT_FILE]

writes OUT_DIR/<name>/tokenizer.json for each tokenizer and OUT_DIR/cases.json:
    {"tokenizers": VERSION, "suites": [{"name", "tokenizer", "cases": [{"text", "ids", "decoded"}]}]}
with `ids` = Tokenizer.encode(text).ids (special tokens added as the post-processor says) and
`decoded` = Tokenizer.decode(ids) (special tokens skipped). With GPT2_DIR (vocab.json, merges.txt)
and TEXT_FILE it also builds GPT-2's tokenizer from OpenAI's files and records TEXT_FILE.
Nothing is downloaded.
"""

import json
import os
import sys

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Llama 3's and Qwen 2's pre-tokenizer patterns, as their tokenizer.json files give them.
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")

SENTENCES = [
    "Det var en gang en fjord i Norge, og vannet var klart som glass.",
    "Ærlig talt: østers på Åndalsnes smaker best når sjøen er kald.",
    "Blåbærsyltetøy og brunost på vaffel – det er søndag på hytta.",
    "Ørreten hoppet i elva ved Bø, og vi så på den i 12 minutter.",
    "Η γλώσσα είναι ελληνική, και ο ουρανός είναι γαλάζιος πάνω από τη θάλασσα.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "東京の天気は晴れです。北京今天下雨了，我们在家里喝茶。",
    "서울의 봄은 아름답습니다. 한국어 텍스트입니다.",
    "اللغة العربية جميلة، والكتابة من اليمين إلى اليسار.",
    "Numbers: 0 1 22 333 4444 55555 3.14159 2026-12-07 +47 22 33 44 55, 1,000,000.",
    "Emoji: 🎉 🇳🇴 👩‍👩‍👧 🚀🚀🚀 ❤️ and a 🐟 in the fjord.",
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,\n\nnew lines and trailing   ",
    "  indented line with    runs     of spaces\n    and a code block:\n\tif (x) { return 42; }",
    "It's we'll they're you've I'm he'd can't WON'T Don'T, 'quoted' and \"double\".",
    "URLs like https://example.no/fjord?a=1&b=2 and e-mail ola@nordmann.no.",
    "Mixed: Tromsø–Oslo 1 750 km, 2×3=6, ½ + ¼, ²³, ① ② ③, Ⅻ.",
]

HELD_OUT = [
    "Hvordan går det med deg i dag? Bra, takk – og du?",
    "Vær så snill å lukke døra; det blåser på Værøy.",
    "Καλημέρα! Πώς είσαι; Здравствуйте, как дела? 你好，世界！こんにちは。",
    "مرحبا بالعالم 123 and ١٢٣ Arabic-Indic digits.",
    "Unseen scripts: ᚠᚢᚦᚨᚱᚲ runes, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math, עברית, हिन्दी, ไทย.",
    "Combining: e\u0301 a\u030a versus é å (NFC), and ﬁ ligature.",
    "Lots of digits 98765432109876543210 and 007 and 3.0e-8.",
    "En fjordsjø er en innsjø i en fjord; fjordsjøen ved fjordsjø.",
    "", " ", "  ", "\n", "\t \n \t", "a", "å", "🎉", "   leading spaces", "trailing spaces   ",
    "x\r\ny\r\n\r\nz", "non\u00a0breaking\u2009thin\u3000ideographic spaces",
]


def corpus():
    lines = []
    for i in range(40):
        for j, s in enumerate(SENTENCES):
            lines.append(s if (i + j) % 3 else s.upper() if i % 2 else s.lower())
    return lines


def with_specials(specials, texts):
    """Texts with special tokens inside them, which are matched whole in raw text."""
    a, b = specials[0], specials[-1]
    return texts + [f"{a}Hei{b}", f"før {b} etter", f"{b}{b}  {a}x", f"<{b}>", f"{a[:-1]}"]


def byte_level(name, pattern, normalizer=None, prefix_space=False, ignore_merges=False):
    tok = Tokenizer(models.BPE())
    if normalizer:
        tok.normalizer = normalizer
    if pattern is None:  # GPT-2: ByteLevel with its own regex
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=prefix_space, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    if ignore_merges:  # as in Llama 3's file: a pre-token that is itself in the vocabulary is one token
        data = json.loads(tok.to_str())
        data["model"]["ignore_merges"] = True
        # A vocabulary entry that the merges do not reach: " fjordsjø" only through ignore_merges.
        data["model"]["vocab"]["ĠfjordsjÃ¸"] = max(data["model"]["vocab"].values()) + 1
        tok = Tokenizer.from_str(json.dumps(data))
    bos = tok.token_to_id(specials[0])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{specials[0]} $A", special_tokens=[(specials[0], bos)]),
    ])
    return name, tok, specials


def byte_fallback(name, legacy):
    """Llama 2 (legacy: Prepend/Replace normalizers) or Mistral-style (Metaspace) byte-fallback BPE."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                    prepend_scheme="first")])
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=specials + byte_tokens, show_progress=False,
                                  limit_alphabet=120)
    tok.train_from_iterator(corpus(), trainer)
    # Byte tokens are ordinary vocabulary in Llama 2's file, not added tokens.
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in specials]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return name, tok, specials


def main():
    out = sys.argv[1]
    built = [
        byte_level("llama3", LLAMA3, ignore_merges=True),
        byte_level("qwen2", QWEN2, normalizer=normalizers.NFC()),
        byte_level("gpt2-style", None, prefix_space=True),
        byte_fallback("llama2", legacy=True),
        byte_fallback("mistral", legacy=False),
    ]
    train_text = "\n".join(corpus())
    suites = []
    for name, tok, specials in built:
        os.makedirs(os.path.join(out, name), exist_ok=True)
        path = os.path.join(out, name, "tokenizer.json")
        tok.save(path)
        texts = [train_text, "\n".join(HELD_OUT)] + SENTENCES + with_specials(specials, HELD_OUT)
        cases = []
        for text in texts:
            ids = tok.encode(text).ids
            cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
        suites.append({"name": name, "tokenizer": path, "cases": cases})

    if len(sys.argv) > 3:  # GPT-2's real files, through the library's own loader
        gpt2_dir, text_file = sys.argv[2], sys.argv[3]
        tok = Tokenizer(models.BPE.from_file(os.path.join(gpt2_dir, "vocab.json"),
                                             os.path.join(gpt2_dir, "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|endoftext|>"])
        os.makedirs(os.path.join(out, "gpt2"), exist_ok=True)
        path = os.path.join(out, "gpt2", "tokenizer.json")
        tok.save(path)
        with open(text_file, encoding="utf-8") as f:
            text = f.read()
        cases = []
        for t in [text, "\n".join(SENTENCES), "\n".join(HELD_OUT)] + SENTENCES + HELD_OUT:
            ids = tok.encode(t).ids
            cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids)})
        suites.append({"name": "gpt2", "tokenizer": path, "cases": cases})

    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizers": tokenizers.__version__, "suites": suites}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
