"""Estimate per-GPU model-state memory for the LLaVA-1.5 recipes; prints the table in docs/training.md.

Model states only: weights, gradients and optimizer state. Activations (which grow with
sequence length, batch size and gradient checkpointing), the CUDA context, communication
buffers and allocator fragmentation are not included. These are estimates, not measurements.

    .venv/bin/python tools/memory_table.py

Full finetuning (projector and LLM train, vision encoder frozen) uses DeepSpeed's own
estimators for the trainable part, with bf16 weights and fp32 master weights and Adam state:
ZeRO-2 keeps a full bf16 copy of the weights on every GPU, ZeRO-3 partitions everything. The
frozen encoder is held in bf16 (DeepSpeed casts the whole model), replicated under ZeRO-2 and
partitioned under ZeRO-3 (vltool builds the model inside ``deepspeed.zero.Init``).

LoRA and QLoRA run in one process without DeepSpeed and are simple byte counts:

- LoRA: the LLM in bf16 (the dtype of the Qwen2.5 checkpoints), the CLIP tower in fp32 (the
  dtype of its checkpoint), and 16 B per trainable parameter for the adapters and the projector
  (fp32 weight, fp32 gradient, two fp32 Adam moments; PEFT keeps adapters in fp32).
- QLoRA: the LLM's decoder linear layers in 4-bit NF4 with double quantisation (0.5 B per
  weight plus one 8-bit absmax per 64 weights and one fp32 absmax per 256 blocks); the frozen
  embedding table and untied LM head in bf16 (vltool casts them back after PEFT's
  ``prepare_model_for_kbit_training`` upcasts them); norms and biases in fp32, as PEFT leaves
  them; encoder, adapters and projector as for LoRA.
"""

from dataclasses import dataclass

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

GIB = 2**30
GPUS = 8
LORA_RANK = 128  # _base_/llms/lora.py
QLORA_RANK = 128  # the QLoRA recipes are the LoRA recipes (_base_/llms/lora.py) with a 4-bit LLM
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit code, 8-bit absmax per 64, fp32 absmax per 256 blocks
CLIP_L14_336_PARAMS = 303_507_456  # CLIPVisionModel: hidden 1024, MLP 4096, 24 layers, 577 positions
CLIP_HIDDEN = 1024


@dataclass(frozen=True)
class Qwen2:
    """The shape of a Qwen2.5 model, as in its config.json."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    published_params: int  # the count transformers reports for the checkpoint

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every decoder linear layer: LoRA's targets ("all-linear" leaves out the LM head)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        per_layer = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
        return per_layer * self.layers

    @property
    def linear_weights(self) -> int:
        return sum(a * b for a, b in self.linear_shapes())

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        biases = self.layers * (self.hidden + 2 * self.kv_dim)  # q, k and v have biases
        norms = self.layers * 2 * self.hidden + self.hidden
        head = 0 if self.tied else self.embedding
        return self.linear_weights + biases + norms + self.embedding + head

    def lora_params(self, rank: int) -> int:
        return sum(rank * (a + b) for a, b in self.linear_shapes())


QWEN2_5 = [
    Qwen2("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True, 494_032_768),
    Qwen2("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True, 1_543_714_304),
    Qwen2("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False, 7_615_616_512),
]


def projector_params(llm: Qwen2) -> int:
    """mlp2x_gelu: Linear(1024 -> hidden), GELU, Linear(hidden -> hidden), with biases."""
    return CLIP_HIDDEN * llm.hidden + llm.hidden + llm.hidden * llm.hidden + llm.hidden


def full_zero2(llm: Qwen2, gpus: int) -> float:
    trainable = llm.params + projector_params(llm)
    _, gpu = estimate_zero2_model_states_mem_needs(trainable, num_gpus_per_node=gpus, cpu_offload=False)
    return gpu + 2 * CLIP_L14_336_PARAMS  # frozen bf16 encoder, a full copy per GPU


def full_zero3(llm: Qwen2, gpus: int) -> float:
    trainable = llm.params + projector_params(llm)
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        trainable, llm.embedding, num_gpus_per_node=gpus, cpu_offload=False, cpu_offload_params=False
    )
    return gpu + 2 * CLIP_L14_336_PARAMS / gpus  # frozen bf16 encoder, partitioned


def lora(llm: Qwen2) -> tuple[float, int]:
    trainable = llm.lora_params(LORA_RANK) + projector_params(llm)
    return 2 * llm.params + 4 * CLIP_L14_336_PARAMS + 16 * trainable, trainable


def qlora(llm: Qwen2) -> tuple[float, int]:
    trainable = llm.lora_params(QLORA_RANK) + projector_params(llm)
    tables = llm.embedding * (1 if llm.tied else 2)  # frozen, kept in bf16 (vltool.model.lora)
    small = llm.params - llm.linear_weights - tables  # norms and biases, upcast to fp32 by PEFT
    base = NF4_BYTES * llm.linear_weights + 2 * tables + 4 * small
    return base + 4 * CLIP_L14_336_PARAMS + 16 * trainable, trainable


def main() -> None:
    rows = [
        "| LLM (+ CLIP-L/14-336, MLP projector) | parameters | full, ZeRO-2, 8 GPUs | full, ZeRO-3, 8 GPUs "
        f"| LoRA r={LORA_RANK}, 1 GPU | QLoRA NF4 r={QLORA_RANK}, 1 GPU |",
        "|---|---|---|---|---|---|",
    ]
    for llm in QWEN2_5:
        assert llm.params == llm.published_params, (llm.name, llm.params)
        total = llm.params + CLIP_L14_336_PARAMS + projector_params(llm)
        lora_bytes, lora_trainable = lora(llm)
        qlora_bytes, qlora_trainable = qlora(llm)
        rows.append(
            f"| {llm.name} | {total / 1e9:.2f} B | {full_zero2(llm, GPUS) / GIB:.1f} GiB "
            f"| {full_zero3(llm, GPUS) / GIB:.1f} GiB "
            f"| {lora_bytes / GIB:.1f} GiB ({lora_trainable / 1e6:.0f} M trainable) "
            f"| {qlora_bytes / GIB:.1f} GiB ({qlora_trainable / 1e6:.0f} M trainable) |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
