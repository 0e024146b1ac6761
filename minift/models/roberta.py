"""RoBERTa: BERT's layers with positions offset by ``padding_idx + 1`` and its own sentence head.

Liu et al., "RoBERTa: A Robustly Optimized BERT Pretraining Approach" (2019). The backbone is ``BertModel``
with ``RobertaEmbeddings`` (registered under ``roberta``): a token's position is ``padding_idx + 1 +`` its
index among the non-pad tokens, and pad tokens get position ``padding_idx`` (fairseq's
``make_positions``). Its classification head is ``heads.RobertaClassificationHead`` (``classifier.dense``,
``classifier.out_proj``) on the first token, without the pooler.
"""
from __future__ import annotations

import torch

from minift.models.bert import ADAPTER_SITES, CONFIG_DEFAULTS, CONFIG_KEYS, BertEmbeddings, BertModel, read_config
from minift.models.config import ModelConfig
from minift.models.heads import linear_head, roberta_head
from minift.models.registry import Family, HeadSpec, MemorySpec


class RobertaEmbeddings(BertEmbeddings):
    """``BertEmbeddings`` whose position ids start at ``padding_idx + 1`` and skip pad tokens."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id if config.pad_token_id is not None else 1
        C = config.hidden_size
        self.position_embeddings = torch.nn.Embedding(config.max_position_embeddings, C, padding_idx=self.padding_idx)

    def position_ids(self, input_ids: torch.Tensor | None, T: int, device: torch.device) -> torch.Tensor:
        """``(B, T)`` from ids (pads → ``padding_idx``), or ``(1, T)`` = ``padding_idx + 1 ..`` for embeddings."""
        if input_ids is None:
            return torch.arange(self.padding_idx + 1, T + self.padding_idx + 1, device=device)[None, :]
        not_pad = input_ids.ne(self.padding_idx).long()  # (B, T)
        return torch.cumsum(not_pad, dim=1) * not_pad + self.padding_idx  # (B, T)

    def forward(self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        T = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if T + self.padding_idx + 1 > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {T} exceeds RoBERTa's limit of "
                             f"{self.position_embeddings.num_embeddings - self.padding_idx - 1} tokens; truncate it")
        return super().forward(input_ids, token_type_ids, inputs_embeds)


class RobertaModel(BertModel):
    """The RoBERTa encoder: ``BertModel`` with ``RobertaEmbeddings``."""

    embeddings_class = RobertaEmbeddings


def _build(config: ModelConfig, head_kind: str | None) -> RobertaModel:
    return RobertaModel(config, add_pooler=head_kind is None)


FAMILY = Family(
    model_type="roberta",
    prefix="roberta",
    build_backbone=_build,
    hf_class="RobertaModel",
    config_keys=CONFIG_KEYS,
    config_defaults={**CONFIG_DEFAULTS, "pad_token_id": 1},  # transformers' RobertaConfig
    read_config=read_config,
    architectures=("Roberta",),
    heads={
        "classification": HeadSpec(key="classifier", build=roberta_head, pooling="first",
                                   hf_class="RobertaForSequenceClassification"),
        "regression": HeadSpec(key="classifier", build=roberta_head, pooling="first",
                               hf_class="RobertaForSequenceClassification"),
        "token-classification": HeadSpec(key="classifier", build=linear_head, pooling="tokens",
                                         hf_class="RobertaForTokenClassification", dropout=True),
    },
    # position_ids: a buffer older transformers saved; lm_head.*: RobertaForMaskedLM's head (roberta-base).
    skip=(r"\.position_ids$", r"^lm_head\."),
    optional=(r"^roberta\.pooler\.",),
    lora_targets=("query", "value"),
    adapter_sites=ADAPTER_SITES,
    bpe_processor="RobertaProcessing",  # <s> A </s></s> B </s>
    tokenizer_classes=("RobertaTokenizer", "RobertaTokenizerFast"),
    memory=MemorySpec(attention=("attention.self.query", "attention.self.key", "attention.self.value"),
                      mlp=("intermediate.dense",), post_norm=True, positions="learned-per-row", token_types=True,
                      embedding_norm=True,
                      head_steps=dict.fromkeys(("classification", "regression"),
                                               ("dropout", "dense", "tanh", "dropout", "out_proj"))),
)
