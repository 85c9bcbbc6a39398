"""Tiny Hugging Face sequence classifiers, built locally for the tests (no model hub).

Each builder makes a real tokenizer with the `tokenizers` library from a few sentences, creates a
randomly initialised (seeded) `AutoModelForSequenceClassification` of a few thousand parameters, and saves
both with `save_pretrained`, exactly as a user's `Trainer` would leave them on disk. Every build of a kind is
the same model: byte-level BPE and SentencePiece are trained (deterministic); a WordPiece vocabulary is built
from the sentences' characters and words (`wordpiece_vocab`), since tokenizers' WordPiece trainer picks a
different vocabulary in every process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

CORPUS = [
    "помогите мне",
    "помогите мне восстановить пароль",
    "где мой заказ",
    "хочу вернуть товар",
    "спасибо за помощь",
    "please help me",
    "where is my order",
    "I want a refund for this item",
    "thank you very much",
    "the app crashes when I log in",
    "emoji test 🙂 🚀",
    "0123456789 !?.,;:",
]
ID2LABEL = {0: "help", 1: "order_status", 2: "refund", 3: "thanks"}
MAX_POSITIONS = 64


WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_vocab(specials: list[str] = WORDPIECE_SPECIALS) -> dict[str, int]:
    """A BERT-style (lowercase) WordPiece vocabulary of CORPUS, the same in every process: the special tokens,
    every character alone and as a continuation (##c), then every word, most frequent first."""
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(word for sentence in CORPUS
                    for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence)))
    chars = sorted({char for word in words for char in word})
    tokens = [*specials, *chars, *(f"##{char}" for char in chars),
              *sorted((word for word in words if len(word) > 1), key=lambda word: (-words[word], word))]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def _label_maps() -> tuple[dict[int, str], dict[str, int]]:
    return dict(ID2LABEL), {v: k for k, v in ID2LABEL.items()}


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def build_tiny_bert(out_dir: Path) -> Path:
    """BERT with a WordPiece tokenizer; takes token_type_ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(wordpiece_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=MAX_POSITIONS,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    id2label, label2id = _label_maps()
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=MAX_POSITIONS, id2label=id2label, label2id=label2id,
        pad_token_id=tok.token_to_id("[PAD]"),
    )
    _seed()
    model = BertForSequenceClassification(config).eval()
    return _save(model, fast, out_dir)


def build_tiny_distilbert(out_dir: Path) -> Path:
    """DistilBERT with a WordPiece tokenizer; has no token_type_ids input."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    bert_dir = build_tiny_bert(out_dir / "_bert_tokenizer")
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(bert_dir)
    fast.model_input_names = ["input_ids", "attention_mask"]
    id2label, label2id = _label_maps()
    config = DistilBertConfig(
        vocab_size=len(fast), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
        max_position_embeddings=MAX_POSITIONS, id2label=id2label, label2id=label2id,
        pad_token_id=fast.pad_token_id,
    )
    _seed()
    model = DistilBertForSequenceClassification(config).eval()
    return _save(model, fast, out_dir)


def _spread_answers(model) -> None:
    """Re-draw every matrix with std 0.2 (seeded). transformers' init (std 0.02) gives a random tiny model almost
    the same probabilities for every text (differences ~1e-5, one label for all): a test could then not tell
    one text's answer from another's. With wider weights answers differ by > 1e-3 and the labels vary."""
    import torch

    generator = torch.Generator().manual_seed(5)  # a seed whose tiny models give several labels over the tests' texts
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def _save(model, tokenizer, out_dir: Path) -> Path:
    _spread_answers(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "bert": build_tiny_bert,
    "distilbert": build_tiny_distilbert,
}


# --- more architectures and tokenizer kinds (byte-level BPE, SentencePiece Unigram, slow-only SentencePiece) ---

def _train_sentencepiece(specials: dict[str, int], user_defined: list[str]) -> bytes:
    """A real SentencePiece Unigram model trained on CORPUS; `specials` maps pad/unk/bos/eos pieces to ids."""
    import io

    import sentencepiece as spm

    (pad, pad_id), (unk, unk_id), (bos, bos_id), (eos, eos_id) = specials.items()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="unigram", vocab_size=150,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2, user_defined_symbols=user_defined,
        pad_piece=pad, pad_id=pad_id, unk_piece=unk, unk_id=unk_id, bos_piece=bos, bos_id=bos_id,
        eos_piece=eos, eos_id=eos_id,
    )
    return model.getvalue()


def _sentencepiece_vocab(model: bytes) -> list[tuple[str, float]]:
    """(piece, score) in id order, read with the sentencepiece library (no protobuf involved)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=model)
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


def build_tiny_roberta(out_dir: Path) -> Path:
    """RoBERTa with a byte-level BPE tokenizer; no token_type_ids; position ids start after padding_idx, and the
    tokenizer sets no model_max_length, so the limit comes from max_position_embeddings - 2."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=specials, show_progress=False)
    merges = [tuple(pair.split(" ")) if isinstance(pair, str) else tuple(pair)
              for pair in json.loads(bpe._tokenizer.to_str())["model"]["merges"]]
    fast = RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges)
    id2label, label2id = _label_maps()
    config = RobertaConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1, id2label=id2label, label2id=label2id,
        pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
    )
    _seed()
    return _save(RobertaForSequenceClassification(config).eval(), fast, out_dir)


def build_tiny_xlm_roberta(out_dir: Path) -> Path:
    """XLM-RoBERTa with a SentencePiece Unigram vocabulary (saved as tokenizer.json)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    model = _train_sentencepiece({"<pad>": 1, "<unk>": 3, "<s>": 0, "</s>": 2}, ["<mask>"])
    fast = XLMRobertaTokenizer(vocab=_sentencepiece_vocab(model), model_max_length=MAX_POSITIONS)
    id2label, label2id = _label_maps()
    config = XLMRobertaConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1, id2label=id2label, label2id=label2id,
        pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
    )
    _seed()
    return _save(XLMRobertaForSequenceClassification(config).eval(), fast, out_dir)


def _albert_model(vocab_size: int, pad_token_id: int):
    from transformers import AlbertConfig, AlbertForSequenceClassification

    id2label, label2id = _label_maps()
    config = AlbertConfig(
        vocab_size=vocab_size, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=MAX_POSITIONS, id2label=id2label, label2id=label2id,
        pad_token_id=pad_token_id,
    )
    _seed()
    return AlbertForSequenceClassification(config).eval()


ALBERT_SPECIALS = {"<pad>": 0, "<unk>": 1, "[CLS]": 2, "[SEP]": 3}


def build_tiny_albert(out_dir: Path) -> Path:
    """ALBERT with a SentencePiece Unigram vocabulary, saved by save_pretrained (tokenizer.json)."""
    from transformers import AlbertTokenizer

    vocab = _sentencepiece_vocab(_train_sentencepiece(ALBERT_SPECIALS, ["[MASK]"]))
    fast = AlbertTokenizer(vocab=vocab, model_max_length=MAX_POSITIONS)
    return _save(_albert_model(len(fast), fast.pad_token_id), fast, out_dir)


def build_tiny_albert_slow(out_dir: Path) -> Path:
    """ALBERT whose tokenizer is only a SentencePiece spiece.model (no tokenizer.json), as older Hub repos
    and slow tokenizers leave it: a converter must build tokenizer.json from it."""
    import json

    spm_model = _train_sentencepiece(ALBERT_SPECIALS, ["[MASK]"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spiece.model").write_bytes(spm_model)
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "AlbertTokenizer", "model_max_length": MAX_POSITIONS, "do_lower_case": True,
        "keep_accents": False, "pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]", "bos_token": "[CLS]", "eos_token": "[SEP]",
    }))
    model = _albert_model(len(_sentencepiece_vocab(spm_model)), ALBERT_SPECIALS["<pad>"])
    model.save_pretrained(out_dir)
    return out_dir


def build_tiny_deberta_v2(out_dir: Path) -> Path:
    """DeBERTa-v2/v3 with a SentencePiece vocabulary; its tokenizer produces token_type_ids but the model has
    no token type embeddings (type_vocab_size=0), so the export must not take them."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Tokenizer

    specials = {"[PAD]": 0, "[UNK]": 3, "[CLS]": 1, "[SEP]": 2}
    vocab = _sentencepiece_vocab(_train_sentencepiece(specials, ["[MASK]"]))
    fast = DebertaV2Tokenizer(vocab=vocab, unk_id=3, model_max_length=MAX_POSITIONS)
    id2label, label2id = _label_maps()
    config = DebertaV2Config(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS, type_vocab_size=0, relative_attention=True, position_buckets=16,
        max_relative_positions=MAX_POSITIONS, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        id2label=id2label, label2id=label2id, pad_token_id=fast.pad_token_id,
    )
    _seed()
    return _save(DebertaV2ForSequenceClassification(config).eval(), fast, out_dir)


def build_tiny_electra(out_dir: Path) -> Path:
    """ELECTRA with a WordPiece vocabulary and token_type_ids."""
    from transformers import ElectraConfig, ElectraForSequenceClassification, ElectraTokenizer

    fast = ElectraTokenizer(vocab=wordpiece_vocab(), model_max_length=MAX_POSITIONS)
    id2label, label2id = _label_maps()
    config = ElectraConfig(
        vocab_size=len(fast), embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=MAX_POSITIONS, id2label=id2label, label2id=label2id,
        pad_token_id=fast.pad_token_id,
    )
    _seed()
    return _save(ElectraForSequenceClassification(config).eval(), fast, out_dir)


BUILDERS.update({
    "roberta": build_tiny_roberta,
    "xlm_roberta": build_tiny_xlm_roberta,
    "albert": build_tiny_albert,
    "albert_slow": build_tiny_albert_slow,
    "deberta_v2": build_tiny_deberta_v2,
    "electra": build_tiny_electra,
})


# --- heads of every kind (the pipeline's function: none, sigmoid, softmax) and pair models --------------------

def with_head(kind: str, labels: dict[int, str], problem_type: str | None) -> Callable[[Path], Path]:
    """A builder of `kind`'s tiny model (same tokenizer and body config) with another classification head:
    `labels` names its logits, `problem_type` is saved in config.json as a Trainer would leave it."""

    def build(out_dir: Path) -> Path:
        import shutil

        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        base = BUILDERS[kind](out_dir.parent / f"_{out_dir.name}_base")
        config = AutoConfig.from_pretrained(base)
        config.id2label = dict(labels)
        config.label2id = {name: index for index, name in labels.items()}
        config.problem_type = problem_type
        tokenizer = AutoTokenizer.from_pretrained(base)
        _seed()
        model = AutoModelForSequenceClassification.from_config(config).eval()
        shutil.rmtree(base)
        return _save(model, tokenizer, out_dir)

    return build


NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}
BUILDERS.update({
    # single texts
    "regression": with_head("bert", {0: "rating"}, "regression"),  # raw value (function none)
    "one_logit": with_head("distilbert", {0: "spam"}, None),  # a single logit, no problem_type: sigmoid
    "multi_label": with_head("bert", {0: "toxic", 1: "insult", 2: "threat", 3: "obscene"},
                             "multi_label_classification"),  # sigmoid per label
    # text pairs
    "nli_bert": with_head("bert", NLI_LABELS, None),  # WordPiece pair template, token_type_ids: softmax
    "nli_roberta": with_head("roberta", NLI_LABELS, "single_label_classification"),  # byte-level BPE <s>A</s></s>B</s>
    "reranker": with_head("bert", {0: "LABEL_0"}, None),  # a cross-encoder: one logit, sigmoid
})
