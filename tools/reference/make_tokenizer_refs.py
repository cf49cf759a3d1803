#!/usr/bin/env python3
"""Reference token ids for tests/test_tokenizer.c.

Run from the repository root with the pyenv python3 (packages: tokenizers, gguf,
sentencepiece, regex):

    RILQ_DATA=/work/shared RILQ_SMOLLM2=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        python3 tools/reference/make_tokenizer_refs.py

Writes tests/data/tokenizer/*.jsonl: '#' lines say how the file was made, every
other line is one JSON object {"text": ..., "ids": [...]} or {"text": ..., "words": [...]}.

References used (none of them is our own code):
  * SPM (llama2.c tokenizer.bin, 32k LLaMA-2 vocab and stories260K tok512): the real
    `sentencepiece` library, given a ModelProto of type BPE with byte_fallback built
    from the pieces and scores (identity normalizer, add_dummy_prefix true,
    remove_extra_whitespaces false). Also the id count and an FNV-1a hash of the ids
    of the whole WikiText-2 test text encoded as one segment (32k vocab).
  * Byte-level (SmolLM2 vocab and merges read from the GGUF): HF `tokenizers` with
    pre_tokenizer Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
    use_regex=True)], ByteLevel decoder, control tokens (token_type 3) as special added tokens.
  * Pre-tokenizer word boundaries: the Python `regex` module with the GPT-2 and LLaMA-3
    patterns (reference/formats-and-eval.md 3.3), and the HF pre-tokenizer for SmolLM.
"""
import json
import os
import random
import struct
import sys

import regex
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")
DATA = os.environ.get("RILQ_DATA", "/work/shared")
SMOLLM2 = os.environ.get("RILQ_SMOLLM2", os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                  r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def test_strings():
    """A few hundred varied strings, deterministic."""
    base = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\n ", "\r\n", "a", "A", "hello", " hello", "hello ",
        "hello  ", "Hello world", "Hello, world!", "Hello  world", "Hello   world   ", "  leading spaces",
        "trailing spaces   ", "tabs\tand\ttabs", "\ttab start", "mixed \t \n whitespace \n\n\t end",
        "line one\nline two\n", "para\n\n\nnext para", "windows\r\nnewlines\r\n", "x \n y", "x\n\ny", " \n\n x",
        "I'm", "I'M", "you're", "YOU'RE", "we've", "WE'VE", "he'll", "HE'LL", "she'd", "SHE'D", "it's", "IT'S",
        "don't", "DON'T", "Don'T", "can't stop won't stop", "'s", "'S", "'re", " 's", "rock'n'roll", "O'Neil's",
        "1", "12", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "2024-05-29", "v1.2.3", "0x1F",
        "31415926535897932384626433832795028841971693993751", " 42", "a1b2c3", "100%", "$5.99", "1st 2nd 3rd",
        "٣٤٥ Arabic digits", "Ⅻ roman", "½ ¾ ²", "१२३ devanagari digits",
        "café", "naïve résumé", "Größe straße", "Ελληνικά κείμενο", "Русский текст, да.", "Україна",
        "日本語のテキスト", "中文文本，标点。", "한국어 텍스트", "עברית", "العربية نص", "हिन्दी पाठ", "ไทย",
        "Tiếng Việt có dấu", "Ἀρχιμήδης", "ǅungla", "ſtuff", "İstanbul ıi",
        "emoji 😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "❤️", "✓ done", "→ arrow ←", "…", "—dash—",
        "\u00a0nbsp", "a\u00a0b", "a\u2009thin", "a\u3000ideographic", "zero\u200bwidth", "soft\u00adhyphen",
        "def f(x):\n    return x * 2\n", "int main(void) {\n\treturn 0;\n}\n", "for (i = 0; i < n; i++) a[i] += b[i];",
        "if x == 1:\n    pass\nelif x != 2:\n\tpass", "<html><body>Hi</body></html>", "{\"key\": [1, 2, 3]}",
        "SELECT * FROM t WHERE a='b';", "x=>x*x", "a->b", "#include <stdio.h>", "   indented code",
        "https://example.com/path?q=1&r=2", "user@example.com", "C:\\Windows\\System32", "~/.bashrc",
        "!!!", "???", "...", "---", "***", "(((", "a.b.c", "end.", "Mr. Smith", "U.S.A.", "e.g. i.e.",
        "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "Once upon a time, there was a little girl.",
        "Question: What is 2 + 2?\nAnswer: 4", "Q: Is it true?\nA: Yes.\n\nQ: Next?", " = Valkyria Chronicles III = \n",
        " @-@ ", "1 @,@ 000", "the 2011 season , he", "<unk>", "<s>", "</s>", "a<s>b", "<|endoftext|>",
        "x<|im_start|>y", "<|im_end|>\n", "text <|im_start|>user\nhi<|im_end|>", "<<s>>", "<0x0A>", "▁", "▁▁x",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "abababababababababab", "                    ", "\n\n\n\n\n\n",
        "x" * 200, "ab " * 50, "\u0301combining", "e\u0301", "ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0001F600x",
        "tab\t\tend\t", "a\u2028b", "a\u0085b", "a\vb\fc",
    ]
    rng = random.Random(1234)
    frags = [w for w in base if w and len(w) < 40] + ["the", "and", " of", "'", "'s", " ", "  ", "\n", "\t", "7", "99",
                                                       "é", "ü", "😀", "中", "!", ",", "-", "x"]
    extra = []
    for _ in range(100):
        n = rng.randint(1, 8)
        extra.append("".join(rng.choice(frags) for _ in range(n)))
    seen, out = set(), []
    for s in base + extra:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def write_jsonl(name, header_lines, rows):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        for h in header_lines:
            f.write("# " + h + "\n")
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("wrote", path, os.path.getsize(path), "bytes", file=sys.stderr)


def read_llama2c_tokenizer(path, n_vocab):
    with open(path, "rb") as f:
        data = f.read()
    off = 4
    pieces = []
    for _ in range(n_vocab):
        score, ln = struct.unpack_from("<fi", data, off)
        off += 8
        pieces.append((data[off:off + ln].decode("utf-8"), score))
        off += ln
    assert off == len(data)
    return pieces


def spm_from_llama2c(path, n_vocab):
    """A real SentencePiece BPE model with the pieces and scores of a llama2.c tokenizer.bin."""
    m = sp_pb2.ModelProto()
    for i, (piece, score) in enumerate(read_llama2c_tokenizer(path, n_vocab)):
        p = m.pieces.add()
        if i == 0:
            p.piece, p.type = "<unk>", sp_pb2.ModelProto.SentencePiece.UNKNOWN
        elif i == 1:
            p.piece, p.type = "<s>", sp_pb2.ModelProto.SentencePiece.CONTROL
        elif i == 2:
            p.piece, p.type = "</s>", sp_pb2.ModelProto.SentencePiece.CONTROL
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            p.piece, p.type = piece, sp_pb2.ModelProto.SentencePiece.BYTE
        else:
            p.piece, p.type = piece.replace(" ", "\u2581"), sp_pb2.ModelProto.SentencePiece.NORMAL
        p.score = score
    t = m.trainer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = n_vocab
    t.byte_fallback = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    nz = m.normalizer_spec
    nz.name = "identity"
    nz.add_dummy_prefix = True
    nz.remove_extra_whitespaces = False
    nz.escape_whitespaces = True
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


def fnv1a64_ids(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in struct.pack("<i", i):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def make_spm_refs(strings):
    for rel, n_vocab, name in [("models/stories260K/tok512.bin", 512, "spm_tok512.jsonl"),
                                ("models/llama2-tokenizer/tokenizer.bin", 32000, "spm_llama2.jsonl")]:
        sp = spm_from_llama2c(os.path.join(DATA, rel), n_vocab)
        rows = [{"text": s, "ids": sp.encode(s)} for s in strings]
        header = [f"Expected ids (no BOS) for $RILQ_DATA/{rel} (vocab {n_vocab}).",
                  f"Generated by tools/reference/make_tokenizer_refs.py with sentencepiece {spm.__version__}:",
                  "a ModelProto of type BPE, byte_fallback, identity normalizer, add_dummy_prefix true,",
                  "remove_extra_whitespaces false, pieces/scores from the file (spaces back to U+2581).",
                  "sentencepiece does not parse control tokens (<s>) in text: such text is plain text here."]
        if n_vocab == 32000:
            wiki = os.path.join(DATA, "datasets/wikitext2/wiki.test.raw")
            if os.path.exists(wiki):
                with open(wiki, encoding="utf-8") as f:
                    text = f.read()
                ids = sp.encode(text)
                rows.insert(0, {"file": "datasets/wikitext2/wiki.test.raw", "n_ids": len(ids),
                                "fnv1a64": "%016x" % fnv1a64_ids(ids)})
                header.append("The first row: the whole WikiText-2 test text as one segment: id count and FNV-1a 64 "
                              "of the ids as little-endian int32.")
        write_jsonl(name, header, rows)


def gguf_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def make_smollm2_refs(strings):
    r = gguf.GGUFReader(SMOLLM2)
    tokens = gguf_strings(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in gguf_strings(r, "tokenizer.ggml.merges")]
    tt = r.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])
    rows = []
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == s, s
        rows.append({"text": s, "ids": ids})
    write_jsonl("bytelevel_smollm2.jsonl", [
        "Expected ids for the SmolLM2-135M vocab and merges read from the GGUF ($RILQ_SMOLLM2).",
        f"Generated by tools/reference/make_tokenizer_refs.py with HF tokenizers {tokenizers.__version__}: "
        "BPE(vocab, merges), pre_tokenizer Sequence[Digits(individual_digits=True), "
        "ByteLevel(add_prefix_space=False, use_regex=True)], control tokens (token_type 3) added as special."],
        rows)
    # The SmolLM split as HF does it (words in the GPT-2 byte->char map, mapped back to text).
    pre = tok.pre_tokenizer
    byte_decoder = decoders.ByteLevel()
    rows = []
    for s in strings:
        words = [byte_decoder.decode([w]) for w, _ in pre.pre_tokenize_str(s)]
        assert "".join(words) == s
        rows.append({"text": s, "words": words})
    write_jsonl("split_smollm.jsonl", [
        "Pre-tokenizer words for the SmolLM split (digits isolated, then the GPT-2 pattern).",
        f"Generated by tools/reference/make_tokenizer_refs.py with HF tokenizers {tokenizers.__version__} "
        "pre_tokenize_str, words mapped back from the byte->char table."], rows)


def make_split_refs(strings):
    for name, pat in [("split_gpt2.jsonl", GPT2_PATTERN), ("split_llama3.jsonl", LLAMA3_PATTERN)]:
        rx = regex.compile(pat)
        rows = []
        for s in strings:
            # "isolated" split: matches and the text between them are words; the patterns match everything
            words = [m.group(0) for m in rx.finditer(s)]
            assert "".join(words) == s, s
            rows.append({"text": s, "words": words})
        write_jsonl(name, [f"Pre-tokenizer words for the pattern {pat!r}.",
                           f"Generated by tools/reference/make_tokenizer_refs.py with the Python regex module "
                           f"{regex.__version__} (finditer)."], rows)


def spm_merges_like_hf(pieces):
    """Merges for an SPM vocab the way transformers' SentencePieceExtractor derives them:
    every split of a piece into two vocab pieces, ordered by the piece's score."""
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    merges = []
    for piece, score in pieces:
        local = []
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                local.append((a, b, score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)
    return [(a, b) for a, b, _ in merges]


def make_hf_json_refs(strings):
    """Small real tokenizer.json files written by HF tokenizers, with expected ids (BOS as the
    post-processor adds it, added tokens parsed) and decoded text (skip_special_tokens=True)."""
    from tokenizers import normalizers, processors, trainers, Regex
    # 1. SPM flavour: the tok512 vocab as LLaMA-2's legacy tokenizer.json is set up.
    raw = read_llama2c_tokenizer(os.path.join(DATA, "models/stories260K/tok512.bin"), 512)
    pieces = []
    for i, (p, score) in enumerate(raw):
        p = {0: "<unk>", 1: "<s>", 2: "</s>"}.get(i, p.replace(" ", "\u2581"))
        pieces.append((p, score))
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    normal = [(p, s) for i, (p, s) in enumerate(pieces) if i >= 259]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges_like_hf(normal), unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    jobs = [("hf_spm_tok512", tok, "the stories260K tok512 vocab as a legacy LLaMA-2 tokenizer.json "
             "(BPE byte_fallback, merges derived from scores as transformers' converter does, Prepend+Replace, "
             "TemplateProcessing <s> $A)")]
    # 2. Byte-level with the GPT-2 split, trained on the test strings; 3. the same vocab behind the
    # LLaMA-3 pipeline (Split regex + ByteLevel(use_regex=False), ignore_merges).
    bl = Tokenizer(models.BPE())
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bl.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    bl.train_from_iterator(strings * 3, trainer=trainer)
    bl.post_processor = processors.ByteLevel(trim_offsets=False)
    jobs.append(("hf_gpt2_small", bl, "a 700-token byte-level BPE trained by HF on the test strings, "
                 "pre_tokenizer ByteLevel(add_prefix_space=False, use_regex=True)"))
    spec = json.loads(bl.to_str())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    spec["model"]["ignore_merges"] = True
    l3 = Tokenizer.from_str(json.dumps(spec))
    l3.post_processor = processors.TemplateProcessing(single="<|im_start|> $A",
                                                      special_tokens=[("<|im_start|>", l3.token_to_id("<|im_start|>"))])
    jobs.append(("hf_llama3_small", l3, "the same vocab behind the LLaMA-3 pipeline: Split(LLaMA-3 regex, "
                 "Isolated) + ByteLevel(use_regex=False), ignore_merges=true, TemplateProcessing <|im_start|> $A"))
    for name, t, what in jobs:
        path = os.path.join(OUT, name + ".json")
        t.save(path)
        rows = []
        for s in strings:
            ids = t.encode(s).ids
            rows.append({"text": s, "ids": ids, "decoded": t.decode(ids, skip_special_tokens=True)})
        write_jsonl(name + ".jsonl", [f"Expected ids (with the post-processor's BOS, added tokens parsed) and "
                                      f"decode(ids, skip_special_tokens=True) for {name}.json:",
                                      what + ".",
                                      f"Both written by tools/reference/make_tokenizer_refs.py with HF tokenizers "
                                      f"{tokenizers.__version__}."], rows)
        print("wrote", path, os.path.getsize(path), "bytes", file=sys.stderr)


def main():
    os.makedirs(OUT, exist_ok=True)
    strings = test_strings()
    print(len(strings), "strings", file=sys.stderr)
    make_split_refs(strings)
    make_smollm2_refs(strings)
    make_spm_refs(strings)
    make_hf_json_refs(strings)


if __name__ == "__main__":
    main()
