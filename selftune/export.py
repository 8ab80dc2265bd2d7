"""Export a run's tuned model where people run models: a Hugging Face folder with a model card
(for the Hub, vLLM, transformers) or one GGUF file (llama.cpp, ollama, LM Studio).

The GGUF file is written with the `gguf` package's writer, the library that reads the embedded
model: llama.cpp's tensor names and metadata keys, the query and key weights permuted to its
rotary layout (transformers' GGUF loader permutes them back), the byte-level BPE vocabulary,
merges and chat template. `check_gguf` loads the file back with transformers and compares its
greedy answers with the merged model's; `check_in_llama_cpp` opens it in llama.cpp itself and
compares next-token predictions, teacher-forced.

Usage:
    selftune export runs/demo --to gguf --quant q8_0
    selftune export runs/demo --model sft --to hf --out exported/ [--push org/name]
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import gguf
import numpy as np
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file

from selftune.config.loading import dump_config
from selftune.errors import MissingExtraError, SelftuneError
from selftune.models import unload
from selftune.run.files import atomic_dir
from selftune.run.plan import fresh_prompts, stage_manifests

# transformers is imported where a model is loaded back (a model class costs ~3 s to import).

GGUF_ARCHITECTURES = ("llama", "mistral")  # written as llama.cpp's `llama` architecture


QUANTS = ("f32", "f16", "q8_0")


LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


CHECK_PROMPTS = [
    "Write a haiku about the sea.",
    "List three fruits, all in lowercase.",
    "Explain why the sky is blue in two sentences.",
]


class ExportError(SelftuneError):
    """A model that cannot be exported as asked (architecture, quantization, offline push)."""


@dataclass(frozen=True)
class GGUFCheck:
    prompts: int
    identical: int  # prompts whose greedy tokens are the same as the merged model's
    first_answer: str


def run_model(run, name: str) -> tuple[str, Path]:
    """The merged model a run recorded under `name`: sft, dpo or grpo (its last round), or ROUND/NAME."""
    cfg = run.saved_config()
    round_number, _, stage = name.rpartition("/")
    round_number = int(round_number.removeprefix("round-")) if round_number else cfg.rounds
    if stage not in ("sft", "dpo", "grpo"):
        raise ExportError(f"--model must be sft, dpo, grpo or ROUND/NAME (ROUND/dpo, ...), not {name!r}")
    return f"{stage}-r{round_number}", run.output_of(stage, "merged", round_number=round_number)


def write_gguf(model_dir: Path, out: Path, quant: str = "f32", progress=None) -> Path:
    """Write a Llama-family safetensors checkpoint as one GGUF file (f32, f16 or q8_0);
    `progress(label, done, total)` follows the tensors."""
    from transformers import AutoConfig, AutoTokenizer

    if quant not in QUANTS:
        raise ExportError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in GGUF_ARCHITECTURES:
        raise ExportError(
            f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} models; {model_dir} is {config.model_type!r} "
            "(export it --to hf, then use llama.cpp's convert_hf_to_gguf.py)"
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
        quant, gguf.LlamaFileType.MOSTLY_Q8_0
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(scratch), "llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or _rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(file_type))
    _add_tokenizer(writer, AutoTokenizer.from_pretrained(model_dir), model_dir)

    weights = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(file))  # torch, not numpy: numpy has no bfloat16
    for done, (hf_name, tensor) in enumerate(weights.items()):
        if progress:
            progress(f"converting tensors to {quant}", done, len(weights))
        name = _gguf_name(hf_name)
        if name is None:
            raise ExportError(f"{model_dir}: tensor {hf_name} has no GGUF name; supported: Llama-family layers")
        if name == "output.weight" and config.tie_word_embeddings:
            continue
        data = tensor.float().numpy()
        if name.endswith("attn_q.weight"):
            data = _rotary_permute(data, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            data = _rotary_permute(data, config.num_key_value_heads)
        if data.ndim == 1 or quant == "f32":  # norms stay f32, as llama.cpp keeps them
            writer.add_tensor(name, data)
        elif quant == "f16" or data.shape[-1] % 32:  # q8_0 blocks are 32 wide; else f16, as llama.cpp does
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(
                name,
                gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
    if progress:
        progress(f"converting tensors to {quant}", len(weights), len(weights))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    scratch.replace(out)
    return out


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return parameters.get("rope_theta", 10000.0)


def _gguf_name(hf_name: str) -> str | None:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"] or len(parts) < 5:
        return None
    module = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{LAYER_TENSORS[module]}.{parts[-1]}" if module in LAYER_TENSORS else None


def _rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout of a query or key projection: each head's rotary halves interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _add_tokenizer(writer, tokenizer, model_dir: Path) -> None:

    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export supports byte-level BPE tokenizers; {model_dir} has {model.get('type')!r}")
    vocab = tokenizer.get_vocab()
    tokens = [""] * max(len(vocab), max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_ids)
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    types = []
    for index in range(len(tokens)):
        if index in special or (index in added and added[index].get("special")):
            types.append(gguf.TokenType.CONTROL)
        elif index in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, value in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if value is not None:
            getattr(writer, f"add_{name}_token_id")(value)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer(pre: dict | None) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (`tokenizer.ggml.pre`). With
    `default`, llama.cpp splits by its own pattern, and a user's text becomes other ids than the model
    was trained on ("it's": `it`, `'`, `s` instead of `it`, `'s`), though the model's weights and
    vocabulary are exact. GPT-2's byte-level pattern (SmolLM2 and the tiny test model, checked by
    tests/test_llama_cpp.py) is `gpt-2`; the same after single digits are split off is `smollm`.
    Other pre-tokenizers keep `default`: `selftune export --llama-cpp` counts the texts llama.cpp
    tokenizes differently."""
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre or {}]
    kinds = [(step.get("type"), step.get("use_regex", step.get("individual_digits"))) for step in steps or []]
    if kinds == [("ByteLevel", True)]:
        return "gpt-2"
    if kinds == [("Digits", True), ("ByteLevel", True)]:
        return "smollm"
    return "default"


def _greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[torch.Tensor, int]:
    """`prompt` as a user turn (chat template applied) followed by the model's greedy answer, as ids
    of shape [1, n], and where the answer starts."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return output, ids["input_ids"].shape[1]


def check_gguf(
    gguf_path: Path, model_dir: Path, prompts: list[str] = CHECK_PROMPTS, max_new_tokens: int = 16, progress=None
) -> GGUFCheck:
    """Load the GGUF file back with transformers, one model at a time, and compare its greedy
    answers to the merged model's on `prompts` (chat template applied); `progress(label, done,
    total)` follows the answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    answers = []
    for source in ("merged", "gguf"):
        if source == "merged":
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        model.eval()
        tokens = []
        for done, prompt in enumerate(prompts):
            if progress:
                progress(f"answering with the {source} model", done, len(prompts))
            output, start = _greedy(model, tokenizer, prompt, max_new_tokens)
            tokens.append(output[0, start:].tolist())
        answers.append(tokens)
        if progress:
            progress(f"answering with the {source} model", len(prompts), len(prompts))
        unload(model)
    identical = sum(a == b for a, b in zip(*answers))
    return GGUFCheck(len(prompts), identical, tokenizer.decode(answers[1][0], skip_special_tokens=True))


# Contractions, digits, spaces, newlines and non-Latin text: where pre-tokenizers differ.
TOKENIZER_PROBE = "It's 1,234 apples; don't   they'll cost $5.50?\n\n  Ünïcödé — 東京 🦙 x2.\t<b>ok</b>"


@dataclass(frozen=True)
class LlamaCppCheck:
    sequences: int
    positions: int  # next-token predictions compared
    top1_agree: int  # positions where llama.cpp's most likely next token is the merged model's
    max_abs_logit_diff: float
    tokenization_texts: int  # each sequence's text, and TOKENIZER_PROBE
    tokenization_identical: int  # texts llama.cpp tokenizes to the ids the model's own tokenizer gives


@contextmanager
def _plain_cpu_buffers(llama_cpp):
    """Load with llama.cpp's plain CPU weight buffers, without the extra buffer types that repack
    weights for a CPU's matrix units. On CPUs with AMX (Intel Xeon Sapphire Rapids and later),
    llama.cpp's AMX repack path crashed the process on q8_0 files (a segmentation fault in decode,
    seen here with llama-cpp-python 0.3.36; llama.cpp issue 20824), while the same file loaded
    with plain buffers gave the expected logits. The check measures the file against the model,
    not a kernel, so it uses the plain path. llama-cpp-python does not expose the model parameter
    `use_extra_bufts` in `Llama()`, so the defaults it starts from are adjusted for this load."""
    module = llama_cpp.llama_cpp
    defaults = module.llama_model_default_params
    if "use_extra_bufts" not in {name for name, _ in module.llama_model_params._fields_}:
        yield  # an older llama.cpp without extra buffer types
        return

    def plain():
        params = defaults()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = plain
    try:
        yield
    finally:
        module.llama_model_default_params = defaults


def check_in_llama_cpp(
    gguf_path: Path, model_dir: Path, prompts: list[str] = CHECK_PROMPTS, answer_tokens: int = 32
) -> LlamaCppCheck:
    """Open the GGUF file in llama.cpp itself (llama-cpp-python, the `llama` extra) and compare it
    with the merged model, teacher-forced: each prompt (chat template applied) followed by the
    merged model's greedy answer is fed to both as the same token ids, and at every position the
    two models' most likely next token and their logits are compared. Free-running answers are not
    the measure: two faithful models part ways on near-tied logits and never meet again. Also
    counts the texts (each sequence's, and `TOKENIZER_PROBE`) that llama.cpp's own tokenizer (the
    GGUF's vocabulary, merges and pre-tokenizer) turns into the ids the model's tokenizer gives. One
    model in memory at a time."""
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtraError(
            "checking a GGUF in llama.cpp needs the llama extra: pip install 'selftune[llama]'"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sequences, expected = [], []
    for prompt in prompts:
        output, _ = _greedy(model, tokenizer, prompt, answer_tokens)
        sequences.append(output[0].tolist())
        with torch.no_grad():
            expected.append(model(output).logits[0].float().numpy())
    unload(model)
    del model

    with _plain_cpu_buffers(llama_cpp):
        llm = llama_cpp.Llama(
            model_path=str(gguf_path), n_ctx=max(map(len, sequences)) + 8, logits_all=True, verbose=False, seed=0
        )
    try:
        positions = agree = tokenized = 0
        worst = 0.0
        for ids, theirs in zip(sequences, expected):
            llm.reset()
            llm.eval(ids)
            ours = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            positions += len(ids)
            agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            worst = max(worst, float(np.abs(ours - theirs[:, : ours.shape[1]]).max()))
        texts = [tokenizer.decode(ids) for ids in sequences] + [TOKENIZER_PROBE]
        for text in texts:
            want = tokenizer(text, add_special_tokens=False)["input_ids"]
            tokenized += llm.tokenize(text.encode(), add_bos=False, special=True) == want
    finally:
        llm.close()
    return LlamaCppCheck(len(sequences), positions, agree, round(worst, 4), len(texts), tokenized)


def write_hf(model_dir: Path, out: Path, card: str) -> Path:
    """The merged model as a clean Hugging Face folder plus its model card (README.md)."""

    with atomic_dir(out) as scratch:
        for file in model_dir.iterdir():
            if file.is_file():
                shutil.copy2(file, scratch / file.name)
        (scratch / "README.md").write_text(card, encoding="utf-8")
    return out


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload an exported folder to the Hub; a clear error offline or without a token."""

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as exc:  # no network, no token, no rights: one sentence for all
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ExportError(
            f"could not push {folder} to the Hub as {repo_id} ({type(exc).__name__}: {first}); the export "
            "stays on disk: check the network and `huggingface-cli login`, then push again"
        ) from None
    return str(getattr(info, "commit_url", repo_id))


def model_card(run, name: str, model_dir: Path) -> str:
    """The Hub model card of an exported model: base model, recipe, data, evaluation with its
    intervals, lineage hashes and the selftune version that made it."""

    cfg = run.saved_config()
    round_number = int(name.rsplit("-r", 1)[1])
    spec = cfg.model.spec
    base = spec if spec.count("/") == 1 and not Path(spec).exists() else None
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [selftune, lora, sft, dpo]"]
    lines += [f"base_model: {base}"] if base else []
    lines += ["---", "", f"# {run.root.name} / {name}", ""]
    lines += [
        f"Tuned from `{spec}` by [selftune](https://pypi.org/project/selftune/) "
        f"{_version(metadata)}: the model answered prompts, a scorer checked the answers, LoRA SFT "
        "trained on the good ones, then DPO (a fresh LoRA on the merged SFT model) on pairs of good "
        f"and bad answers. This is the merged {name.split('-')[0].upper()} model of round {round_number}.",
        "",
        "## Data",
        "",
    ]
    # An unreadable manifest counts as absent.
    plan = stage_manifests(run, cfg.rounds, fresh=fresh_prompts(cfg), grpo=cfg.grpo.enabled)
    manifests = {(step.stage, step.round_number): manifest for step, manifest in plan}
    for stage, keys in (("sample", ("prompts", "samples", "yield")), ("sft-data", ("examples", "by_source"))):
        manifest = manifests.get((stage, round_number))
        if manifest:
            lines.append(f"- {stage}: " + ", ".join(f"{k} {manifest.metrics.get(k)}" for k in keys))
    pairs = manifests.get(("pairs", round_number))
    if pairs:
        train = pairs.metrics.get("train", {})
        lines.append(f"- pairs: {train.get('pairs')} (negatives by source: {train.get('by_source')})")
    lines += ["", "## Evaluation (held-out prompts, tasks and wordings never seen in training)", ""]
    results_path = run.optional_output("evaluate", "results", round_number=cfg.rounds)
    if results_path:
        results = json.loads(results_path.read_text())
        lines += [
            "| model | prompt strict | instruction strict | vs base (95% CI) | p |",
            "| --- | --- | --- | --- | --- |",
        ]
        for model, metrics in results["models"].items():
            follow = metrics.get("instruction_following", {})
            versus = metrics.get("vs_base")
            gain = f"{versus['delta']:+.3f} [{versus['ci95'][0]:+.3f}, {versus['ci95'][1]:+.3f}]" if versus else "-"
            p = f"{versus['p_value']:.3g}" if versus else "-"
            lines.append(
                f"| {model} | {follow.get('prompt_strict', 0):.3f} | {follow.get('instruction_strict', 0):.3f} "
                f"| {gain} | {p} |"
            )
    else:
        lines.append("The run has no evaluation yet.")
    lines += ["", "## Lineage", "", "| stage | config hash | outputs (sha256) |", "| --- | --- | --- |"]
    for step, manifest in plan:
        if manifest:
            outputs = ", ".join(f"{k} {v.sha256[:12]}" for k, v in manifest.outputs.items())
            lines.append(f"| {step.label} | {manifest.config_hash} | {outputs} |")
    lines += ["", "## Recipe (the run's config)", "", "```yaml", dump_config(cfg).rstrip(), "```", ""]
    return "\n".join(lines)


def _version(metadata) -> str:
    try:
        return metadata.version("selftune")
    except metadata.PackageNotFoundError:
        return "(source checkout)"
