"""What differs between InternLM generations, as data: prompt markers, stop words, tensor names."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

INTERNLM2_META_INSTRUCTION = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as "
    "English and 中文."
)


@dataclass(frozen=True)
class Family:
    """One InternLM generation: how its prompts look and how its checkpoint maps onto Llama."""

    name: str
    model_types: tuple[str, ...]
    system_turn: str  # format with {meta}; "" when the family has no system prompt
    user_turn: str  # format with {query}; ends where the model starts answering
    assistant_end: str  # appended after an earlier response in the history
    stop_words: tuple[str, ...]
    default_meta_instruction: str = ""
    tensor_renames: tuple[tuple[str, str], ...] = ()
    fused_qkv: str | None = None  # name of a fused q/k/v projection to split at load time
    web_demo_temperature: float = 0.8
    chat_defaults: dict = field(
        default_factory=lambda: {"max_new_tokens": 1024, "do_sample": True, "temperature": 0.8, "top_p": 0.8}
    )

    @property
    def has_system_prompt(self) -> bool:
        return bool(self.system_turn)


INTERNLM = Family(
    name="internlm",
    model_types=("internlm",),
    system_turn="",
    user_turn="<|User|>:{query}<eoh>\n<|Bot|>:",
    assistant_end="<eoa>\n",
    stop_words=("<eoa>",),
    web_demo_temperature=0.7,
)

INTERNLM2 = Family(
    name="internlm2",
    model_types=("internlm2",),
    system_turn="<|im_start|>system\n{meta}<|im_end|>\n",
    user_turn="<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n",
    assistant_end="<|im_end|>\n",
    stop_words=("<|im_end|>",),
    default_meta_instruction=INTERNLM2_META_INSTRUCTION,
    tensor_renames=(
        ("model.tok_embeddings.", "model.embed_tokens."),
        ("output.", "lm_head."),
        (".attention.wo.", ".self_attn.o_proj."),
        (".feed_forward.w1.", ".mlp.gate_proj."),
        (".feed_forward.w3.", ".mlp.up_proj."),
        (".feed_forward.w2.", ".mlp.down_proj."),
        (".attention_norm.", ".input_layernorm."),
        (".ffn_norm.", ".post_attention_layernorm."),
    ),
    fused_qkv=".attention.wqkv.",
    web_demo_temperature=0.7,
)

INTERNLM3 = Family(
    name="internlm3",
    model_types=("internlm3",),
    system_turn=INTERNLM2.system_turn,
    user_turn=INTERNLM2.user_turn,
    assistant_end=INTERNLM2.assistant_end,
    stop_words=INTERNLM2.stop_words,
    default_meta_instruction=INTERNLM2_META_INSTRUCTION,
)

# The stand-in model (see models/standin.py): ChatML as in its own chat template, whose default system
# prompt this is. Its model card suggests temperature 0.2, but the packaged 4-bit file is near a tie between
# English and French for plain English questions ("The capital of France…" 0.55, "L'…" 0.36 at 0.2), so
# it decodes greedily with a mild repetition penalty (a 135M model left alone repeats itself); replies are
# capped at 512 tokens. The page's temperature slider still samples when raised.
SMOLLM2 = Family(
    name="smollm2",
    model_types=("smollm2",),
    system_turn=INTERNLM2.system_turn,
    user_turn=INTERNLM2.user_turn,
    assistant_end=INTERNLM2.assistant_end,
    stop_words=INTERNLM2.stop_words,
    default_meta_instruction="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    web_demo_temperature=0.0,
    chat_defaults={"max_new_tokens": 512, "do_sample": False, "top_p": 0.9, "repetition_penalty": 1.1},
)

FAMILIES = (INTERNLM, INTERNLM2, INTERNLM3, SMOLLM2)
CONVERTED_LLAMA_TYPES = ("llama",)


def family_for(model_type: str, special_tokens: set[str]) -> Family | None:
    """The family of a checkpoint, or None when the model type is not an InternLM one.

    A folder already converted to Llama keeps Llama tensor names; its prompt format follows
    its tokenizer (ChatML markers mean InternLM2/3, otherwise InternLM v1).
    """
    if model_type in CONVERTED_LLAMA_TYPES:
        template = INTERNLM2 if "<|im_start|>" in special_tokens else INTERNLM
        return replace(template, name=f"llama ({template.name} prompts)", tensor_renames=(), fused_qkv=None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None
