"""A Transformer classifier: embeddings, the unified encoder, and a task head.

This is the object every method receives (``model.encoder`` is where masks,
pruning and token selection happen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from trimlab.models.encoder import Encoder, EncoderOutput


class ClassifierHead(nn.Module):
    """Pools the class token and maps it to logits.

    ``pre`` picks the layer before the classifier: ``tanh_dense`` (BERT pooler,
    RoBERTa and MPNet heads), ``relu_dense`` (DistilBERT pre-classifier),
    ``gelu_dense`` (ELECTRA head), ``layernorm`` (ViT final norm) or ``none``.
    """

    def __init__(self, hidden_size: int, num_labels: int, pre: str, dropout: float, layer_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.pre_kind = pre
        if pre in ("tanh_dense", "relu_dense", "gelu_dense"):
            self.pre = nn.Linear(hidden_size, hidden_size)
        elif pre == "layernorm":
            self.pre = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        elif pre == "none":
            self.pre = nn.Identity()
        else:
            raise ValueError(f"unknown head pre-layer {pre!r}")
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def pooled(self, hidden: Tensor) -> Tensor:
        x = self.pre(hidden[:, 0])
        if self.pre_kind == "tanh_dense":
            x = x.tanh()
        elif self.pre_kind == "relu_dense":
            x = x.relu()
        elif self.pre_kind == "gelu_dense":
            x = nn.functional.gelu(x)
        return x

    def forward(self, hidden: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.pooled(hidden)))


@dataclass
class ClassifierOutput:
    logits: Tensor
    encoder: EncoderOutput


class TransformerClassifier(nn.Module):
    """Embeddings → :class:`Encoder` → :class:`ClassifierHead`."""

    def __init__(self, embeddings: nn.Module, encoder: Encoder, head: ClassifierHead, num_protected: int = 1) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder
        self.head = head
        self.num_protected = num_protected

    def forward(
        self,
        batch: Mapping[str, Tensor],
        head_mask: Sequence[Tensor] | Tensor | None = None,
        neuron_mask: Sequence[Tensor] | Tensor | None = None,
        drop_tokens: bool = True,
        output_hidden_states: bool = False,
    ) -> ClassifierOutput:
        hidden, valid = self.embeddings(batch)
        out = self.encoder(
            hidden,
            valid,
            head_mask=head_mask,
            neuron_mask=neuron_mask,
            num_protected=self.num_protected,
            drop_tokens=drop_tokens,
            output_hidden_states=output_hidden_states,
        )
        return ClassifierOutput(self.head(self.head_input(out)), out)

    def head_input(self, out: EncoderOutput) -> Tensor:
        """What the head reads: the encoder's last hidden states (its pooler picks the class token)."""
        return out.hidden
